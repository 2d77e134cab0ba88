"""The error envelope every failing response carries."""

from typing import Literal

from chatgate.protocol.base import WireModel


class ErrorBody(WireModel):
    nullable = frozenset({"code", "param"})

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(WireModel):
    """OpenAI's ``{"error": {...}}`` plus chatgate's ``success`` flag and ``trace_id``."""

    success: Literal[False] = False
    error: ErrorBody
    trace_id: str
