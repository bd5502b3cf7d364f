"""The images plugin: messages of type ``images`` -> a generated image.

Calls ``POST {FASTAPI_URL}/api/generation/image`` with the prompt and options,
saves the result in the ``media_collection`` (``media``) keyed by jobId, and
moves the job through its states with progress (see ``vip_worker.pipeline``).
Shares the poller's generation client with the articles plugin.
"""

from vip_worker import hookimpl, pipeline


def handle_image(message, ctx):
    client = pipeline.generation_client(ctx.poller)

    def generate():
        return pipeline.gated_call(ctx, message.payload, lambda: client.image(
            message.payload, read_timeout_s=ctx.time_left_s, job_id=message.job_id),
            tokens=0)

    pipeline.run_job(message, ctx, generate, ctx.settings.media_collection)


@hookimpl
def vip_worker_register_handlers(register):
    register("images", handle_image)


@hookimpl
def vip_worker_poller_start(context):
    pipeline.generation_client(context)


@hookimpl
def vip_worker_poller_stop(context):
    pipeline.close_generation_client(context)
