"""Everything that talks to SQS, and the only package that imports boto3.

``api`` is the typed interface the rest of the daemon calls; ``boto`` implements it
with boto3 in threads, ``wire`` on the event loop (``sigv4`` signs, ``http11``
carries); ``limits`` declares SQS's own limits once; ``queues`` finds queue URLs
and dead-letter queues.
"""
