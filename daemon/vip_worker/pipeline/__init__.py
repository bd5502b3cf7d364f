"""The content pipeline the bundled plugins run: a job's life in the job store
(``runner``), the generation-service client (``generation``) and the app's side,
creating jobs and sending their messages (``producer``).

``run_job``, ``generation_client`` and ``close_generation_client`` are importable
from here, as the plugin guide shows (``from vip_worker import pipeline``).
"""

from vip_worker.pipeline.runner import close_generation_client, generation_client, run_job

__all__ = ["close_generation_client", "generation_client", "run_job"]
