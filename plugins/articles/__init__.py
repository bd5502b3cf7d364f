"""The articles plugin: handles messages of type ``articles``.

Loaded from the project's ``plugins/`` like any user plugin. This first form
validates the request (the seed's payload: ``mode``, ``topic``, ``wordCount``,
``tone``...) and records the job's outcome in its log; the generation-service
client and the job store are wired in by the content-pipeline work.
"""

from vip_worker import PermanentError, hookimpl

MODES = ("topic", "keywords", "trends", "spin")


def handle_article(message, ctx):
    payload = message.payload
    mode = payload.get("mode", "topic")
    if mode not in MODES:
        raise PermanentError(f"unknown generation mode {mode!r} (known: {', '.join(MODES)})")
    topic = payload.get("topic")
    if mode == "topic" and not (isinstance(topic, str) and topic.strip()):
        raise PermanentError("payload.topic is required for mode 'topic'")
    words = payload.get("wordCount", 1000)
    if not isinstance(words, int) or not 50 <= words <= 20000:
        raise PermanentError(f"payload.wordCount must be an integer 50..20000, got {words!r}")
    ctx.log.info("article.accepted", extra={"mode": mode, "word_count": words})


@hookimpl
def vip_worker_register_handlers(register):
    register("articles", handle_article)
