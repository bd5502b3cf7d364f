"""What a poller fleet needs beside the pollers when it runs as a service: the
health endpoint, the spot-interruption watcher and the EMF metrics."""
