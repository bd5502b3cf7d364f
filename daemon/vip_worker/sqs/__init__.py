"""Everything that talks to SQS, and the only package that imports boto3.

``api`` is the typed interface the rest of the daemon calls (and the errors it
raises); ``boto`` implements it with boto3 in threads and has the blocking client
of the commands, the producer and the dev stack; ``wire`` implements it on the
event loop (``sigv4`` signs, ``http11`` carries); ``limits`` declares SQS's own
limits once; ``queues`` finds queue URLs and dead-letter queues; ``local`` holds
the fake credentials of local runs.
"""
