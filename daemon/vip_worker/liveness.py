"""The shared memory a poller writes and the arbiter reads (no imports: the master loads it).

One ``multiprocessing.RawArray('d', SIZE)`` per poller, made before fork:
the poller's loop writes the monotonic time every second (TICK), 1.0 once it
serves (READY), and its counts; CLOCK_MONOTONIC is the same in every process.
"""

TICK, READY, INFLIGHT, HANDLED = range(4)
SIZE = 4
