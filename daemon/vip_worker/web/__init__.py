"""The job API the app calls (``vip-worker web``): FastAPI routes, authentication, limits.

- ``settings.py``: the ``web_*`` settings (entry point ``vip_worker.settings`` ``web``).
- ``keys.py``: API keys, stored hashed in a file; ``vip-worker web-key``.
- ``auth.py``: who is calling (an API key, the app's session JWT, or loopback open access).
- ``models.py``: the request and response bodies (the app's camelCase JSON).
- ``limits.py``: the per-user rate limit and the body size limit.
- ``app.py``: the routes; ``events.py``: the Server-Sent Events stream of a job.
- ``server.py``: the command: the bind check, then uvicorn.

The web reads and writes jobs through the job store interface and sends messages through
the producer, as the CLI does; nothing here imports boto3 (only ``vip_worker.sqs`` does).
"""
