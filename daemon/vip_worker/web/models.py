"""Request and response bodies, in the app's camelCase JSON (docs/api.md).

Requests forbid unknown fields and bound every length, so a 422 names each bad field
(FastAPI's ``{"detail": [{"loc": ["body", "wordCount"], "msg": ...}]}``). The article
model is made per app: ``mode`` is one of the configured ``article_modes``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

MAX_TEXT = 500
MAX_WORDS = 10000
Short = Field(default=None, max_length=100)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Where the job's end is POSTed (docs/api.md, "Completion callbacks"); checked by
    # the route against the callback rules (422 naming this field).
    callbackUrl: str | None = Field(default=None, max_length=2000)  # noqa: N815


class ArticleFields(Request):
    topic: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    keywords: list[str] | None = Field(default=None, max_length=50)
    wordCount: int | None = Field(default=None, ge=100, le=MAX_WORDS)  # noqa: N815 (the app's)
    tone: str | None = Short
    seoOptimization: bool | None = None  # noqa: N815
    includeImages: bool | None = None  # noqa: N815
    targetAudience: str | None = Field(default=None, max_length=200)  # noqa: N815
    language: str | None = Field(default=None, max_length=20)
    title: str | None = Field(default=None, max_length=MAX_TEXT)
    content: str | None = Field(default=None, max_length=50000, description="text to spin")


def article_request(modes: list[str]) -> type[ArticleFields]:
    """The article body with ``mode`` among ``modes`` (an enum in the OpenAPI schema)."""
    mode_type: Any = Literal[tuple(modes)]
    return create_model("ArticleRequest", __base__=ArticleFields,
                        mode=(mode_type, Field(default=modes[0])))


class ImageRequest(Request):
    prompt: str = Field(min_length=1, max_length=2000)
    size: str | None = Field(default=None, pattern=r"^[1-9][0-9]{1,3}x[1-9][0-9]{1,3}$")
    style: str | None = Short
    quality: str | None = Short
    negativePrompt: str | None = Field(default=None, max_length=2000)  # noqa: N815


class Queued(BaseModel):
    """202: the job is created and its message sent (or its inline run started)."""

    success: bool = True
    jobId: str  # noqa: N815
    message: str = "Job queued successfully"


class ResultLocation(BaseModel):
    """Where a completed job's result lives: one document with this jobId."""

    collection: str
    jobId: str  # noqa: N815


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str | None = None


class Usage(BaseModel):
    """What the job's generation used, as the service reported it, and its cost."""

    tokensIn: int = 0  # noqa: N815
    tokensOut: int = 0  # noqa: N815
    images: int = 0
    model: str | None = None
    cost: float | None = None  # by the prices table; null: the model has no price


class Job(BaseModel):
    jobId: str  # noqa: N815
    type: str | None = None
    status: str
    progress: int = 0
    progressEstimated: bool = False  # noqa: N815 - estimated from durations, not measured
    usage: Usage | None = None
    message: str | None = None
    error: str | None = None
    attempts: int = 0
    createdAt: datetime | None = None  # noqa: N815
    updatedAt: datetime | None = None  # noqa: N815
    startedAt: datetime | None = None  # noqa: N815
    completedAt: datetime | None = None  # noqa: N815
    cancelRequestedAt: datetime | None = None  # noqa: N815
    cancelledAt: datetime | None = None  # noqa: N815
    result: ResultLocation | None = None
    links: JobLinks


class JobPage(BaseModel):
    jobs: list[Job]
    nextCursor: str | None = None  # noqa: N815


class Error(BaseModel):
    detail: Any
