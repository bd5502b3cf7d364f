"""What a poller fleet needs beside the pollers when it runs as a service: the
health endpoint, the spot-interruption watcher, the EMF metrics (and the dashboard's
per-minute buckets), the lifeline, completion callbacks and the fleet reporter."""
