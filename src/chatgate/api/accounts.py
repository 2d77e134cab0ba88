"""The accounts JSON API under ``/api`` (the console's back end): sign-up, sessions, tokens, admin.

Browser sessions travel in an HttpOnly cookie; every state-changing call must also send the
session's CSRF token in ``x-csrf-token``.
"""

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from chatgate.api.deps import SESSION_COOKIE, AccountsDep, AdminDep, SignedInDep, TokensDep
from chatgate.services.accounts import Account, SignedIn
from chatgate.services.tokens import TokenInfo

router = APIRouter()


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class PasswordChange(Body):
    current_password: str
    new_password: str = Field(max_length=1024)


class NewToken(Body):
    name: str = "default"
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    quota_cap: int | None = Field(default=None, ge=0)


class Rename(Body):
    name: str


class Grant(Body):
    credits: int


class Disable(Body):
    disabled: bool


def _account(account: Account) -> dict[str, Any]:
    data: dict[str, Any] = jsonable_encoder(asdict(account))
    return data


def _token(token: TokenInfo) -> dict[str, Any]:
    data: dict[str, Any] = jsonable_encoder(asdict(token))
    return data


def _session_response(request: Request, cookie: str, signed_in: SignedIn, status: int) -> JSONResponse:
    settings = request.app.state.settings
    response = JSONResponse(
        {"user": _account(signed_in.account), "csrf_token": signed_in.csrf_token}, status_code=status
    )
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=settings.session_hours * 3600,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",
        path="/",
    )
    return response


@router.post("/signup")
async def sign_up(body: Credentials, request: Request, accounts: AccountsDep) -> JSONResponse:
    await accounts.sign_up(body.email, body.password)
    cookie, signed_in = await accounts.log_in(body.email, body.password)
    return _session_response(request, cookie, signed_in, 201)


@router.post("/login")
async def log_in(body: Credentials, request: Request, accounts: AccountsDep) -> JSONResponse:
    cookie, signed_in = await accounts.log_in(body.email, body.password)
    return _session_response(request, cookie, signed_in, 200)


@router.post("/logout")
async def log_out(request: Request, signed_in: SignedInDep, accounts: AccountsDep) -> Response:
    await accounts.log_out(request.cookies.get(SESSION_COOKIE, ""))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me")
async def me(signed_in: SignedInDep, accounts: AccountsDep) -> JSONResponse:
    account = await accounts.get(signed_in.account.id)
    return JSONResponse({"user": _account(account), "csrf_token": signed_in.csrf_token})


@router.post("/me/password")
async def change_password(body: PasswordChange, signed_in: SignedInDep, accounts: AccountsDep) -> Response:
    await accounts.change_password(signed_in.account.id, body.current_password, body.new_password)
    return Response(status_code=204)


@router.get("/tokens")
async def list_tokens(signed_in: SignedInDep, tokens: TokensDep) -> JSONResponse:
    return JSONResponse({"data": [_token(t) for t in await tokens.list(signed_in.account.id)]})


@router.post("/tokens")
async def create_token(body: NewToken, signed_in: SignedInDep, tokens: TokensDep) -> JSONResponse:
    info, secret = await tokens.create(
        signed_in.account.id,
        name=body.name,
        expires_at=body.expires_at,
        allowed_models=body.allowed_models,
        quota_cap=body.quota_cap,
    )
    return JSONResponse({**_token(info), "key": secret}, status_code=201)


@router.patch("/tokens/{token_id}")
async def rename_token(
    token_id: int, body: Rename, signed_in: SignedInDep, tokens: TokensDep
) -> JSONResponse:
    return JSONResponse(_token(await tokens.rename(signed_in.account.id, token_id, body.name)))


@router.delete("/tokens/{token_id}")
async def revoke_token(token_id: int, signed_in: SignedInDep, tokens: TokensDep) -> JSONResponse:
    return JSONResponse(_token(await tokens.revoke(signed_in.account.id, token_id)))


@router.get("/admin/users")
async def admin_users(
    admin: AdminDep,
    accounts: AccountsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    return JSONResponse({"data": [_account(a) for a in await accounts.list(limit=limit, offset=offset)]})


@router.post("/admin/users/{user_id}/grant")
async def admin_grant(user_id: int, body: Grant, admin: AdminDep, accounts: AccountsDep) -> JSONResponse:
    return JSONResponse(_account(await accounts.grant(user_id, body.credits)))


@router.post("/admin/users/{user_id}/disable")
async def admin_disable(user_id: int, body: Disable, admin: AdminDep, accounts: AccountsDep) -> JSONResponse:
    return JSONResponse(_account(await accounts.set_disabled(user_id, body.disabled)))
