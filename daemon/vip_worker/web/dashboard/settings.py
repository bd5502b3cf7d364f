"""The dashboard's settings, all of them, found by ``vip_worker.config`` through the
``vip_worker.settings`` entry point ``dashboard`` (setup.cfg), as the job API's: the live
refresh, the charts' history and the rate's window, then the sign-in's."""

from __future__ import annotations

from vip_worker.config import Setting, integer, number, string

SETTINGS: tuple[Setting, ...] = (
    Setting("dashboard_refresh_s", 5.0, number(1, 300),
            "How often the dashboard's live updates refresh, and how long its shared cache "
            "keeps a queue's attributes: at most one GetQueueAttributes per queue per "
            "interval, however many browsers are open."),
    Setting("dashboard_history_h", 3.0, number(0.25, 168),
            "Hours of per-minute history the overview's charts show."),
    Setting("dashboard_rate_window_min", 5, integer(1, 60),
            "Minutes the overview's processing rate (and so its ETA) is averaged over."),
    Setting("dashboard_session_secret", "", string,
            "Key that signs the dashboard's session cookies (HMAC-SHA256); empty: one is "
            "generated once and kept in <state_dir>/dashboard-secret (mode 0600). Give the "
            "same value to every web process behind one load balancer.", secret=True),
    Setting("dashboard_session_max_age_s", 28800, integer(60, 2592000),
            "How long a dashboard sign-in lasts (seconds); then the key is asked again."),
)
