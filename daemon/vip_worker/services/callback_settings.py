"""The completion callbacks' settings (``services/callbacks.py``), found by
``vip_worker.config`` through the ``vip_worker.settings`` entry point ``callbacks``."""

from __future__ import annotations

from vip_worker.config import Setting, integer, number, str_list, string, url

SETTINGS: tuple[Setting, ...] = (
    Setting("callback_url", "", url,
            "Where a job's completion callback is POSTed when the job names no "
            "callbackUrl; empty: only jobs that name one get a callback."),
    Setting("callback_secret", "", string,
            "Key of the callbacks' HMAC-SHA256 signature (X-VIP-Signature); empty: "
            "callbacks are off. Set it from the environment.", secret=True),
    Setting("callback_allowed_hosts", [], str_list,
            "Hosts a callback URL may name (a name, *.suffix, an address or a CIDR); "
            "empty: any public host. Loopback, private, link-local and metadata "
            "addresses are refused unless an address or CIDR entry here covers them."),
    Setting("callback_timeout_s", 5.0, number(0.1, 60),
            "Connect and read timeout of one callback POST."),
    Setting("callback_max_attempts", 12, integer(1, 100),
            "Attempts of one callback before it is given up (callback.gave_up)."),
    Setting("callback_max_age_s", 86400.0, number(1, 2592000),
            "A callback still undelivered this long after its job ended is given up."),
    Setting("callback_backoff_max_s", 300.0, number(1, 86400),
            "Longest wait between attempts (1 s, 2 s, 4 s ... up to this)."),
    Setting("callback_sweep_interval_s", 5.0, number(0.1, 3600),
            "Seconds between poller 0's sweeps for due callbacks (retries, and those a "
            "dead poller never sent)."),
)
