"""The dashboard's settings, found by ``vip_worker.config`` through the
``vip_worker.settings`` entry point ``dashboard`` (setup.cfg), as the job API's."""

from __future__ import annotations

from vip_worker.config import Setting, integer, string

SETTINGS: tuple[Setting, ...] = (
    Setting("dashboard_session_secret", "", string,
            "Key that signs the dashboard's session cookies (HMAC-SHA256); empty: one is "
            "generated once and kept in <state_dir>/dashboard-secret (mode 0600). Give the "
            "same value to every web process behind one load balancer.", secret=True),
    Setting("dashboard_session_max_age_s", 28800, integer(60, 2592000),
            "How long a dashboard sign-in lasts (seconds); then the key is asked again."),
)
