"""The job store's settings, declared here and found by ``vip_worker.config`` through
the ``vip_worker.settings`` entry point ``store`` (setup.cfg), as a plugin is found.

They are read like every other top-level setting: from the config file, then
``VIP_WORKER_<NAME>``, and ``MONGODB_URI`` / ``MONGODB_DATABASE`` as the app names them.
"""

from __future__ import annotations

from vip_worker.config import Setting, identifier, number, string

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "state_dir", "", string,
        "Directory for local state (the embedded job store). Empty: $STATE_DIRECTORY "
        "(set by systemd's StateDirectory=) or ./var.",
    ),
    Setting(
        "mongodb_uri", "", string,
        "MongoDB connection string; when set, jobs live in MongoDB instead of SQLite.",
        env=("MONGODB_URI",), secret=True,
    ),
    Setting(
        "mongodb_database", "", string,
        "MongoDB database (empty: the one named in the URI, else 'vipcontent').",
        env=("MONGODB_DATABASE",),
    ),
    Setting("sqlite_path", "", string, "Embedded store file (empty: <state_dir>/jobs.sqlite3)."),
    Setting("jobs_collection", "jobs", identifier, "Collection (table) of jobs."),
    Setting("content_collection", "generated_content", identifier,
            "Collection of generated articles."),
    Setting("media_collection", "media", identifier, "Collection of generated images."),
    Setting("metrics_retention_h", 48.0, number(1, 24 * 366),
            "Hours the dashboard's per-minute buckets and fleet records are kept (a TTL "
            "index in MongoDB, a prune in SQLite)."),
    Setting("fleet_report_interval_s", 10.0, number(0, 3600),
            "Seconds between a daemon's reports to the fleet registry in the job store "
            "(one upsert each, by poller 0); a daemon silent for 3 intervals is lost; 0: off."),
)
