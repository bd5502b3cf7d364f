"""The generation service's settings, declared here and found by ``vip_worker.config``
through the ``vip_worker.settings`` entry point ``pipeline`` (setup.cfg), as a plugin is
found.

They are read like every other top-level setting: from the config file, then
``VIP_WORKER_<NAME>``, and ``FASTAPI_URL`` as the app names it.
"""

from __future__ import annotations

from vip_worker.config import Setting, number, str_list, string, url
from vip_worker.sqs.limits import MAX_VISIBILITY_S

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "fastapi_url", "http://127.0.0.1:8000", url,
        "Base URL of the generation service (the FastAPI app).", env=("FASTAPI_URL",),
    ),
    Setting("article_path", "/api/generation/{mode}", string,
            "Path of the article endpoint; {mode} is the payload's mode."),
    Setting("image_path", "/api/generation/image", string, "Path of the image endpoint."),
    Setting("article_modes", ["topic", "keywords", "trends", "spin"], str_list,
            "Generation modes a message may ask for (anything else is refused)."),
    Setting("generation_connect_timeout_s", 5.0, number(0.1, 300),
            "Connect timeout of generation calls."),
    Setting(
        "generation_read_timeout_s", 900.0, number(1, MAX_VISIBILITY_S),
        "Read timeout of generation calls (clipped to the queue's max_job_time_s).",
    ),
)
