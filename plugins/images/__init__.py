"""The images plugin: handles messages of type ``images``.

This first form validates the request (``prompt`` required) and records the
outcome in its log; the generation-service client and the job store are wired
in by the content-pipeline work.
"""

from vip_worker import PermanentError, hookimpl

PROMPT_MAX = 4000


def handle_image(message, ctx):
    prompt = message.payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PermanentError("payload.prompt is required")
    if len(prompt) > PROMPT_MAX:
        raise PermanentError(f"payload.prompt is longer than {PROMPT_MAX} characters")
    ctx.log.info("image.accepted", extra={"prompt_chars": len(prompt)})


@hookimpl
def vip_worker_register_handlers(register):
    register("images", handle_image)
