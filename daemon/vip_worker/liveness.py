"""The shared memory a poller writes and the arbiter reads (no imports: the master loads it).

One ``multiprocessing.RawArray('d', SIZE)`` per poller, made before fork: the
poller's loop writes the monotonic time every second (TICK), 1.0 once it serves
(READY), and its counters; CLOCK_MONOTONIC is the same in every process. The
arbiter turns them into ``status.json``, systemd's STATUS= and the health endpoint.
"""

(TICK, READY, INFLIGHT, HANDLED, SUCCEEDED, RETRIED, DEAD_LETTERED, RELEASED, BUSY_S,
 DEFERRED) = range(10)
SIZE = 10
# Counter slots, by the name used in status.json and the metrics.
COUNTERS = {"handled": HANDLED, "succeeded": SUCCEEDED, "retried": RETRIED,
            "dead_lettered": DEAD_LETTERED, "released": RELEASED, "busy_s": BUSY_S,
            "deferred": DEFERRED}
