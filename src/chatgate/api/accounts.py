"""The accounts JSON API under ``/api`` (the console's back end): sign-up, sessions, tokens, admin.

Browser sessions travel in an HttpOnly cookie; every state-changing call must also send the
session's CSRF token in ``x-csrf-token``. Every string and list a body may hold is bounded here;
numbers are checked against the shared ranges (``chatgate.ranges``), as they are for the command
line and the settings.
"""

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from chatgate import ranges
from chatgate.api.deps import (
    SESSION_COOKIE,
    AccountsDep,
    AdminDep,
    ClientDep,
    InvitesDep,
    MailDep,
    SignedInDep,
    TokensDep,
)
from chatgate.api.openapi import SETS_COOKIE, links, raises
from chatgate.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidRequest,
    MailFailed,
    NotFound,
    NotImplementedFeature,
    RateLimited,
    Unavailable,
)
from chatgate.protocol.accounts import Account as AccountOut
from chatgate.protocol.accounts import (
    AccountList,
    InviteList,
    IssuedInvite,
    IssuedToken,
    PendingVerification,
    Session,
    SignUpMode,
    Token,
    TokenList,
)
from chatgate.protocol.accounts import Invite as InviteOut
from chatgate.protocol.base import INT64_MAX, INT64_MIN
from chatgate.services.accounts import MAX_CREDITS, MIN_PASSWORD, Account, SignedIn
from chatgate.services.audit import Actor
from chatgate.services.invites import InviteInfo
from chatgate.services.tokens import TokenInfo

router = APIRouter()

RowId = Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX)]


def _text(value: object) -> object:
    """A time comes as ISO 8601 text; a number, which pydantic would take for a Unix time, is refused."""
    if not isinstance(value, str):
        raise ValueError("a date-time is ISO 8601 text, such as 2030-01-31T00:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_text)]
Name = Annotated[str, Field(max_length=100)]
Password = Annotated[str, Field(max_length=1024, json_schema_extra={"minLength": MIN_PASSWORD})]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=ranges.PAGE_OFFSET.low, le=ranges.PAGE_OFFSET.high)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(Body):
    email: str = Field(max_length=320)
    password: Password


class SignUp(Credentials):
    invite: str | None = Field(default=None, max_length=100, description="An invite code (`invite` mode).")


class PasswordChange(Body):
    current_password: str = Field(max_length=1024)
    new_password: Password


class Deletion(Body):
    password: str = Field(max_length=1024)


class NewToken(Body):
    name: Name = "default"
    expires_at: IsoTime | None = None
    # Longer than any catalogue's list may be, so the service names the fault (and the limit).
    allowed_models: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, max_length=1000)
    quota_cap: StrictInt | None = Field(default=None, ge=0, le=MAX_CREDITS)


class Rename(Body):
    name: Name


class Grant(Body):
    credits: StrictInt = Field(ge=-MAX_CREDITS, le=MAX_CREDITS)


class Disable(Body):
    disabled: StrictBool


class Limits(Body):
    """A user's own limits; a field left out stays as it is, null goes back to the server's default."""

    rpm_limit: StrictInt | None = Field(default=None, ge=ranges.RPM.low, le=ranges.RPM.high)
    tpm_limit: StrictInt | None = Field(default=None, ge=ranges.TPM.low, le=ranges.TPM.high)
    concurrency_limit: StrictInt | None = Field(
        default=None, ge=ranges.CONCURRENCY.low, le=ranges.CONCURRENCY.high
    )


class NewInvite(Body):
    uses: StrictInt = Field(default=1, ge=ranges.INVITE_USES.low, le=ranges.INVITE_USES.high)
    days: StrictInt | None = Field(default=30, ge=ranges.INVITE_DAYS.low, le=ranges.INVITE_DAYS.high)
    note: str = Field(default="", max_length=200)


def _account(account: Account) -> dict[str, Any]:
    data: dict[str, Any] = jsonable_encoder(asdict(account))
    return data


def _token(token: TokenInfo) -> dict[str, Any]:
    data: dict[str, Any] = jsonable_encoder(asdict(token))
    return data


def _invite(invite: InviteInfo) -> dict[str, Any]:
    data: dict[str, Any] = jsonable_encoder(asdict(invite))
    return data


def _me(signed_in: SignedIn, account: Account, accounts: AccountsDep) -> dict[str, Any]:
    limits = signed_in.principal.user
    return {
        "user": _account(account),
        "csrf_token": signed_in.csrf_token,
        "limits": {
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "concurrency": limits.concurrency,
            "tokens": accounts.rules.tokens_per_user,
        },
    }


def _session_response(
    request: Request, cookie: str, signed_in: SignedIn, accounts: AccountsDep, status: int
) -> JSONResponse:
    settings = request.app.state.settings
    response = JSONResponse(_me(signed_in, signed_in.account, accounts), status_code=status)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=settings.session_hours * 3600,
        httponly=True,
        secure=settings.cookies_secure,
        samesite="lax",
        path="/",
    )
    return response


# A sign-up signs in at once, unless the address must be confirmed first (no cookie then).
SIGNS_IN_UNLESS_VERIFYING: dict[str, Any] = {
    "headers": {
        "set-cookie": {
            **SETS_COOKIE["headers"]["set-cookie"],
            "description": "The session cookie (HttpOnly, SameSite=Lax); none while the email address "
            "waits for confirmation.",
            "required": False,
        }
    }
}


# Refusals of a password check: too many attempts, or too many checks waiting for the hashing bound
# (and, with Redis unreachable and limits failing closed, the limits' own).
_THROTTLED = (
    (RateLimited, "too_many_requests"),
    (Unavailable, "server_busy"),
    (Unavailable, "limits_unavailable"),
)


@router.get("/signup", response_model=SignUpMode)
async def sign_up_mode(accounts: AccountsDep) -> JSONResponse:
    """How accounts are opened here: ``open``, ``invite`` (a code is needed) or ``closed``."""
    return JSONResponse({"mode": accounts.rules.signup})


@router.post(
    "/signup",
    status_code=201,
    response_model=Session | PendingVerification,
    responses={
        201: {
            **SIGNS_IN_UNLESS_VERIFYING,
            **links(
                GrantCredits=("admin_grant", {"user_id": "$response.body#/user/id"}),
                DisableUser=("admin_disable", {"user_id": "$response.body#/user/id"}),
            ),
        },
        **raises(
            Conflict,
            MailFailed,
            NotImplementedFeature,
            (Forbidden, "signup_closed"),
            (Forbidden, "invite_required"),
            (Forbidden, "invalid_invite"),
            *_THROTTLED,
        ),
    },
)
async def sign_up(
    body: SignUp, request: Request, accounts: AccountsDep, mail: MailDep, client: ClientDep
) -> JSONResponse:
    """A new account, signed in; or, when email verification is on, an account waiting for its
    link (no session until it is followed)."""
    made = await accounts.sign_up(body.email, body.password, address=client, invite=body.invite)
    if isinstance(made, Account):  # its address to be confirmed first
        await mail.send_verification(made)
        return JSONResponse({"user": _account(made), "verification_required": True}, status_code=201)
    cookie, signed_in = made
    return _session_response(request, cookie, signed_in, accounts, 201)


@router.post(
    "/login",
    response_model=Session,
    responses={200: SETS_COOKIE, **raises(AuthError, (Forbidden, "email_not_verified"), *_THROTTLED)},
)
async def log_in(
    body: Credentials, request: Request, accounts: AccountsDep, client: ClientDep
) -> JSONResponse:
    cookie, signed_in = await accounts.log_in(body.email, body.password, address=client)
    return _session_response(request, cookie, signed_in, accounts, 200)


@router.post("/logout", status_code=204, response_class=Response)
async def log_out(request: Request, signed_in: SignedInDep, accounts: AccountsDep) -> Response:
    await accounts.log_out(request.cookies.get(SESSION_COOKIE, ""))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=Session)
async def me(signed_in: SignedInDep, accounts: AccountsDep) -> JSONResponse:
    return JSONResponse(_me(signed_in, await accounts.get(signed_in.account.id), accounts))


@router.post(
    "/me/password",
    status_code=204,
    response_class=Response,
    responses=raises((Forbidden, "forbidden"), InvalidRequest, (Unavailable, "server_busy")),
    description="A new password; the user's other sessions end.",
)
async def change_password(body: PasswordChange, signed_in: SignedInDep, accounts: AccountsDep) -> Response:
    await accounts.change_password(signed_in, body.current_password, body.new_password)
    return Response(status_code=204)


@router.delete("/me", status_code=204, response_class=Response, responses=raises(Forbidden))
async def delete_me(body: Deletion, signed_in: SignedInDep, accounts: AccountsDep) -> Response:
    """Delete one's own account (the password confirms it); the session ends with it."""
    await accounts.delete(signed_in.account.id, body.password)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/tokens", response_model=TokenList)
async def list_tokens(signed_in: SignedInDep, tokens: TokensDep) -> JSONResponse:
    return JSONResponse({"data": [_token(t) for t in await tokens.list(signed_in.account.id)]})


@router.post(
    "/tokens",
    status_code=201,
    response_model=IssuedToken,
    responses={
        201: links(
            RenameToken=("rename_token", {"token_id": "$response.body#/id"}),
            RevokeToken=("revoke_token", {"token_id": "$response.body#/id"}),
        ),
        **raises(InvalidRequest, (Conflict, "too_many_tokens")),
    },
)
async def create_token(body: NewToken, signed_in: SignedInDep, tokens: TokensDep) -> JSONResponse:
    info, secret = await tokens.create(
        signed_in.account.id,
        name=body.name,
        expires_at=body.expires_at,
        allowed_models=body.allowed_models,
        quota_cap=body.quota_cap,
    )
    return JSONResponse({**_token(info), "key": secret}, status_code=201)


@router.patch("/tokens/{token_id}", response_model=Token, responses=raises(NotFound))
async def rename_token(
    token_id: RowId, body: Rename, signed_in: SignedInDep, tokens: TokensDep
) -> JSONResponse:
    return JSONResponse(_token(await tokens.rename(signed_in.account.id, token_id, body.name)))


@router.delete(
    "/tokens/{token_id}",
    response_model=Token,
    responses=raises(NotFound),
    description="Revokes the token: it stops working at once, and stays listed with its `revoked_at`.",
)
async def revoke_token(token_id: RowId, signed_in: SignedInDep, tokens: TokensDep) -> JSONResponse:
    return JSONResponse(_token(await tokens.revoke(signed_in.account.id, token_id)))


@router.get("/admin/users", response_model=AccountList)
async def admin_users(
    admin: AdminDep, accounts: AccountsDep, limit: Limit = 100, offset: Offset = 0
) -> JSONResponse:
    return JSONResponse({"data": [_account(a) for a in await accounts.list(limit=limit, offset=offset)]})


@router.post("/admin/users/{user_id}/grant", response_model=AccountOut, responses=raises(NotFound))
async def admin_grant(user_id: RowId, body: Grant, admin: AdminDep, accounts: AccountsDep) -> JSONResponse:
    return JSONResponse(_account(await accounts.grant(user_id, body.credits, Actor.admin(admin.account.id))))


@router.post("/admin/users/{user_id}/disable", response_model=AccountOut, responses=raises(NotFound))
async def admin_disable(
    user_id: RowId, body: Disable, admin: AdminDep, accounts: AccountsDep
) -> JSONResponse:
    account = await accounts.set_disabled(user_id, body.disabled, Actor.admin(admin.account.id))
    return JSONResponse(_account(account))


@router.post("/admin/users/{user_id}/limits", response_model=AccountOut, responses=raises(NotFound))
async def admin_limits(user_id: RowId, body: Limits, admin: AdminDep, accounts: AccountsDep) -> JSONResponse:
    """Set a user's own limits (the fields sent; null: the server's default again)."""
    limits = body.model_dump(exclude_unset=True)
    return JSONResponse(_account(await accounts.set_limits(user_id, limits, Actor.admin(admin.account.id))))


@router.get("/admin/invites", response_model=InviteList)
async def admin_invites(
    admin: AdminDep, invites: InvitesDep, limit: Limit = 100, offset: Offset = 0
) -> JSONResponse:
    return JSONResponse({"data": [_invite(i) for i in await invites.list(limit=limit, offset=offset)]})


@router.post(
    "/admin/invites",
    status_code=201,
    response_model=IssuedInvite,
    responses={201: links(RevokeInvite=("admin_revoke_invite", {"invite_id": "$response.body#/id"}))},
)
async def admin_new_invite(body: NewInvite, admin: AdminDep, invites: InvitesDep) -> JSONResponse:
    """A new invite code: ``code`` is shown this once."""
    info, code = await invites.create(uses=body.uses, days=body.days, note=body.note)
    return JSONResponse({**_invite(info), "code": code}, status_code=201)


@router.delete("/admin/invites/{invite_id}", response_model=InviteOut, responses=raises(NotFound))
async def admin_revoke_invite(invite_id: RowId, admin: AdminDep, invites: InvitesDep) -> JSONResponse:
    return JSONResponse(_invite(await invites.revoke(invite_id)))
