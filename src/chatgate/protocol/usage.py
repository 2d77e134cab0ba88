"""Usage reports: ``GET /v1/usage`` (a token's) and the console's usage and request log (a user's)."""

from datetime import date, datetime
from typing import Literal

from pydantic import Field

from chatgate.protocol.base import WireModel


class UsageTotals(WireModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits_used: int


class DailyUsage(UsageTotals):
    date: date


# The API a request came through, as its usage row names it.
API_FIELD = Field(
    description="The API the request came through: `chat.completions`, `responses`, `messages`, "
    "`embeddings` or `images.generations`."
)


class ModelUsage(UsageTotals):
    model: str


class ApiUsage(UsageTotals):
    api: str = API_FIELD


class UsageSummary(UsageTotals):
    """Totals over every request, then per day, per model and per API."""

    nullable = frozenset({"credits_left"})

    object: Literal["usage"] = "usage"
    credits_left: int | None = Field(
        description="What may still be spent: the balance, or less when the token has a cap; "
        "null for the operator's master key, which is not metered."
    )
    daily: list[DailyUsage]
    models: list[ModelUsage]
    apis: list[ApiUsage]


class LoggedRequest(WireModel):
    nullable = frozenset({"token_id", "error_code"})

    time: datetime
    trace_id: str
    token_id: int | None
    model: str
    api: str = API_FIELD
    prompt_tokens: int
    completion_tokens: int
    cost: int = Field(description="Credits charged.")
    latency_ms: int
    status: str = Field(description="`ok`, `error` or `cancelled`.")
    error_code: str | None


class RequestLog(WireModel):
    """A page of the request log, newest first."""

    total: int = Field(description="How many requests match the filters, over all pages.")
    data: list[LoggedRequest]
