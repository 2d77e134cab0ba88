"""Paying for it, under ``/api`` (console sessions; changes need the CSRF header): redeem a top-up
code, see the prices of one's group, and what a request would cost at most."""

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from chatgate.api.deps import ClientDep, CodesDep, GroupsDep, SignedInDep
from chatgate.api.openapi import raises
from chatgate.errors import (
    Conflict,
    ContextLengthExceeded,
    Forbidden,
    Gone,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    RateLimited,
    UnsupportedParameter,
)
from chatgate.protocol.requests import ChatCompletionRequest

router = APIRouter()


class Code(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    code: str = Field(min_length=1, max_length=100)


class Redeemed(BaseModel):
    credits: int  # what the code added
    balance: int  # the balance now


class ModelPrice(BaseModel):
    model: str
    kind: Literal["chat", "image_generation", "embedding"]
    prompt_per_million: float  # credits per million prompt tokens, after the group's multiplier
    completion_per_million: float | None  # None: an embedding model (its input alone is charged)
    per_image: float | None  # credits per image drawn, for the models that draw
    list_prompt_per_million: int  # the catalogue's prices, before the multiplier
    list_completion_per_million: int


class Pricing(BaseModel):
    group: str
    multiplier: float
    data: list[ModelPrice]


class Estimate(BaseModel):
    model: str
    prompt_tokens: int  # the bound credits are reserved on
    max_completion_tokens: int
    max_credits: int  # the most the request can cost: what its reservation takes
    multiplier: float


@router.post(
    "/redeem",
    responses=raises(
        (NotFound, "code_unknown"),
        (Conflict, "code_used"),
        (Gone, "code_expired"),
        (Forbidden, "code_disabled"),
        (InvalidRequest, "balance_too_large"),
        RateLimited,
    ),
)
async def redeem(body: Code, signed_in: SignedInDep, codes: CodesDep, client: ClientDep) -> Redeemed:
    """Redeem a top-up code; attempts count per user and per client address (``client``: the
    address as trusted proxies report it, an IPv6 /64 as one)."""
    return Redeemed.model_validate(await codes.redeem(signed_in.account.id, body.code, address=client))


@router.get("/pricing", responses=raises(NotFound))
async def pricing(signed_in: SignedInDep, groups: GroupsDep) -> Pricing:
    return Pricing.model_validate(await groups.pricing(signed_in.account.id))


@router.post(
    "/pricing/estimate",
    responses=raises(
        ModelNotFound,
        (InvalidRequest, "model_not_supported"),
        UnsupportedParameter,
        ContextLengthExceeded,
        ModelUnavailable,
    ),
)
async def estimate(body: ChatCompletionRequest, signed_in: SignedInDep, groups: GroupsDep) -> Estimate:
    return Estimate.model_validate(await groups.estimate(signed_in.account.id, body))
