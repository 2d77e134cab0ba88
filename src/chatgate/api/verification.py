"""Email links under ``/api``: confirming an address, and resetting a forgotten password.

No session is needed (the link's secret is the proof); the answers never tell whether an address
has an account.
"""

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from chatgate.api.deps import MailDep
from chatgate.api.openapi import raises
from chatgate.errors import InvalidRequest, MailFailed, NotImplementedFeature, RateLimited

router = APIRouter()


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Link(Body):
    token: str = Field(min_length=1, max_length=200)


class Address(Body):
    email: str = Field(max_length=320)


class NewPassword(Body):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Field(max_length=1024)


class Verified(BaseModel):
    email: str
    email_verified: bool
    credits: int


@router.post("/verify", responses=raises((InvalidRequest, "invalid_link")))
async def verify(body: Link, mail: MailDep) -> Verified:
    account = await mail.verify(body.token)
    return Verified(email=account.email, email_verified=account.email_verified, credits=account.credits)


@router.post(
    "/verify/resend",
    status_code=202,
    response_class=Response,
    responses=raises(RateLimited, MailFailed, NotImplementedFeature),
)
async def resend(body: Address, mail: MailDep) -> Response:
    await mail.resend_verification(body.email)
    return Response(status_code=202)


@router.post(
    "/password/forgot",
    status_code=202,
    response_class=Response,
    responses=raises(RateLimited, MailFailed, NotImplementedFeature),
)
async def forgot(body: Address, mail: MailDep) -> Response:
    await mail.forgot(body.email)
    return Response(status_code=202)


@router.post(
    "/password/reset",
    status_code=204,
    response_class=Response,
    responses=raises((InvalidRequest, "invalid_link"), InvalidRequest),
)
async def reset(body: NewPassword, mail: MailDep) -> Response:
    await mail.reset(body.token, body.new_password)
    return Response(status_code=204)
