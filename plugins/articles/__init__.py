"""The articles plugin: messages of type ``articles`` -> a generated article.

Calls the generation service's ``POST {FASTAPI_URL}/api/generation/{mode}`` with
the payload mapped to its snake_case fields, saves the article in the
``content_collection`` (``generated_content``) keyed by jobId, and moves the job
``queued -> processing -> completed | failed`` with progress (see
``vip_worker.pipeline``). Loaded from the project's ``plugins/`` like any user plugin.
"""

from vip_worker import hookimpl, pipeline


def handle_article(message, ctx):
    client = pipeline.generation_client(ctx.poller)

    def generate(on_words=None):  # on_words: progress follows a streamed answer
        # Under the fleet's quota (pipeline/quota.py): refused -> Deferred, no attempt spent.
        result = pipeline.gated_call(ctx, message.payload, lambda: client.article(
            message.payload, read_timeout_s=ctx.time_left_s, job_id=message.job_id,
            on_words=on_words))
        return {"mode": message.payload.get("mode", "topic"), **result}

    pipeline.run_job(message, ctx, generate, ctx.settings.content_collection)


@hookimpl
def vip_worker_register_handlers(register):
    register("articles", handle_article)


@hookimpl
def vip_worker_poller_start(context):
    pipeline.generation_client(context)  # one requests Session per poller, made after fork


@hookimpl
def vip_worker_poller_stop(context):
    pipeline.close_generation_client(context)
