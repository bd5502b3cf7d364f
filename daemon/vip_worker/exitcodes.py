"""Exit codes of the master and the pollers, named once.

78 (EX_CONFIG from sysexits.h) tells systemd not to restart: the unit sets
RestartPreventExitStatus=78, so a bad setting or plugin fails once and loudly.
"""

OK = 0
# The master could not start or keep pollers (e.g. the crash-loop limit was hit).
SOFTWARE = 70
# A setting, the config file or a plugin is wrong. Restarting will not help.
CONFIG = 78

# Poller-only codes, read by the arbiter when it reaps a poller.
POLLER_BOOT_FAILED = 3  # could not start (plugin start hook, SQS client): counts toward crash loop
POLLER_RECYCLED = 4  # left on purpose after max_messages_per_poller / max_rss_mb: respawn at once
# A long-running task (a receive loop, the heartbeat, the tick, the metrics reporter) died
# of an error; the poller drained and left. A crash: the respawn backs off and counts
# toward the crash loop.
POLLER_TASK_FAILED = 5

# Command exit codes (sysexits.h where one fits).
FAILED = 1  # the command's work failed: enqueue's inline handler (or start hook) raised
USAGE = 64  # bad arguments or input file
NOT_FOUND = 66  # EX_NOINPUT: no such job
UNAVAILABLE = 69  # EX_UNAVAILABLE: the job store cannot be reached
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
