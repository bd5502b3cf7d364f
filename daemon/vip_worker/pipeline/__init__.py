"""The content pipeline the bundled plugins run: a job's life in the job store
(``runner``), the generation-service client (``generation``) and the app's side,
creating jobs and sending their messages (``producer``).

``run_job``, ``generation_client``, ``close_generation_client`` and ``gated_call`` (a
generation call under the quota governor, ``quota``) are importable from here, as the
plugin guide shows (``from vip_worker import pipeline``).
"""

from vip_worker.pipeline.quota import gated_call
from vip_worker.pipeline.runner import close_generation_client, generation_client, run_job

__all__ = ["close_generation_client", "gated_call", "generation_client", "run_job"]
