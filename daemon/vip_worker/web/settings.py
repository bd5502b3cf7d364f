"""The job API's settings, declared here and found by ``vip_worker.config`` through the
``vip_worker.settings`` entry point ``web`` (setup.cfg), as the store's and the pipeline's.
"""

from __future__ import annotations

from vip_worker.config import Setting, integer, number, str_list, string

SETTINGS: tuple[Setting, ...] = (
    Setting("web_host", "127.0.0.1", string,
            "Address `vip-worker web` binds. Anything but loopback is refused (exit 78) "
            "unless authentication is configured (an API key, or web_jwt_key / "
            "web_jwt_jwks_url)."),
    Setting("web_port", 8088, integer(0, 65535), "Port of `vip-worker web` (0: a free one)."),
    Setting("web_keys_file", "", string,
            "File of the API keys' hashes (`vip-worker web-key`); empty: "
            "<state_dir>/web-keys.json. Re-read when it changes."),
    Setting("web_jwt_key", "", string,
            "Key that verifies the app's session tokens (JWT): a PEM public key, or the "
            "shared secret for HS256.", secret=True),
    Setting("web_jwt_jwks_url", "", string,
            "JWKS URL to verify the app's session tokens with (instead of web_jwt_key)."),
    Setting("web_jwt_algorithms", ["RS256", "ES256"], str_list,
            "Algorithms a session token may use."),
    Setting("web_jwt_audience", "", string, "Required `aud` of session tokens (empty: none)."),
    Setting("web_jwt_issuer", "", string, "Required `iss` of session tokens (empty: none)."),
    Setting("web_jwt_user_claim", "sub", string, "Claim of a session token naming the user."),
    Setting("web_forwarded_allow_ips", [], str_list,
            "Proxies whose X-Forwarded-For/-Proto are trusted (uvicorn's "
            "forwarded_allow_ips); empty: none."),
    Setting("web_rate_per_minute", 60.0, number(0.1, 100000),
            "Jobs a user may create per minute (a token bucket per web process)."),
    Setting("web_rate_burst", 10, integer(1, 100000),
            "Jobs a user may create at once before the per-minute rate applies."),
    Setting("web_max_body_bytes", 65536, integer(1024, 1048576),
            "Largest request body accepted (413 above)."),
    Setting("web_events_poll_s", 0.5, number(0.05, 10),
            "How often a job's event stream reads the job from the store."),
)
