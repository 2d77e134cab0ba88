"""Route dependencies, read from ``app.state.services`` (built once in create_app).

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency on a worker thread, a
thread hop per dependency on every request (see the gateway numbers in docs/benchmarks.md).
"""

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import Depends, Header, Request

from chatgate.api.client import ClientAddresses
from chatgate.api.trace import trace_id_of
from chatgate.errors import Forbidden
from chatgate.services.accounts import AccountService, SignedIn
from chatgate.services.audit import AuditLog
from chatgate.services.auth import AuthService, Principal
from chatgate.services.catalogue import ModelRegistry
from chatgate.services.deployments import DeploymentMonitor
from chatgate.services.emails import AccountMail
from chatgate.services.embeddings import EmbeddingService
from chatgate.services.files import FileService
from chatgate.services.groups import GroupService
from chatgate.services.images import ImageService
from chatgate.services.invites import InviteService
from chatgate.services.metering import Caller
from chatgate.services.ratelimit import RateLimiter
from chatgate.services.redemption import RedemptionService
from chatgate.services.requestlog import RequestLog
from chatgate.services.tokens import TokenService
from chatgate.services.usage import UsageRecorder

SESSION_COOKIE = "chatgate_session"
CSRF_HEADER = "x-csrf-token"


def services_of(request: Request) -> Any:
    """The services create_app built; each dependency below names the one it hands out."""
    return request.app.state.services


async def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = services_of(request).registry
    return registry


async def _accounts(request: Request) -> AccountService:
    service: AccountService = services_of(request).accounts
    return service


async def _tokens(request: Request) -> TokenService:
    service: TokenService = services_of(request).tokens
    return service


async def _images(request: Request) -> ImageService:
    service: ImageService = services_of(request).images
    return service


async def _embeddings(request: Request) -> EmbeddingService:
    service: EmbeddingService = services_of(request).embeddings
    return service


async def _files(request: Request) -> FileService:
    service: FileService = services_of(request).files
    return service


async def _usage(request: Request) -> UsageRecorder:
    recorder: UsageRecorder = services_of(request).usage
    return recorder


async def _deployments(request: Request) -> DeploymentMonitor:
    service: DeploymentMonitor = services_of(request).deployments
    return service


async def _audit(request: Request) -> AuditLog:
    service: AuditLog = services_of(request).audit
    return service


async def _request_log(request: Request) -> RequestLog:
    service: RequestLog = services_of(request).requests
    return service


async def _mail(request: Request) -> AccountMail:
    service: AccountMail = services_of(request).mail
    return service


async def _groups(request: Request) -> GroupService:
    service: GroupService = services_of(request).groups
    return service


async def _codes(request: Request) -> RedemptionService:
    service: RedemptionService = services_of(request).codes
    return service


async def _invites(request: Request) -> InviteService:
    service: InviteService = services_of(request).invites
    return service


async def _client(request: Request) -> str:
    """The client address that per-address limits (sign-ups, sign-ins) count against."""
    addresses: ClientAddresses = request.app.state.client_addresses
    return addresses.key(request)


@asynccontextmanager
async def _limited(request: Request, principal: Principal) -> AsyncIterator[None]:
    """The request counts against its caller's limits while it runs (one admission, one release)."""
    limiter: RateLimiter = services_of(request).limiter
    await limiter.admit(principal)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await limiter.add_tokens(principal, 0)


async def _authenticated(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """An API token's (or the master key's) caller, for routes whose service admits it itself."""
    auth: AuthService = services_of(request).auth
    return Caller(await auth.authenticate(authorization), trace_id_of(request))


async def _caller(
    caller: Annotated[Caller, Depends(_authenticated)], request: Request
) -> AsyncIterator[Caller]:
    """An API token's (or the master key's) caller, counted against its limits while the route runs."""
    async with _limited(request, caller.principal):
        yield caller


async def _signed_in(request: Request) -> AsyncIterator[SignedIn]:
    """A console session, counted against its user's limits; state-changing requests must also echo
    its CSRF token in a header."""
    accounts: AccountService = services_of(request).accounts
    signed_in = await accounts.session(request.cookies.get(SESSION_COOKIE))
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), signed_in.csrf_token.encode()):
            raise Forbidden("Missing or wrong CSRF token.", code="csrf_failed")
    async with _limited(request, signed_in.principal):
        yield signed_in


async def _admin(signed_in: Annotated[SignedIn, Depends(_signed_in)]) -> SignedIn:
    if not signed_in.account.is_admin:
        raise Forbidden("Only administrators may do this.")
    return signed_in


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
CallerDep = Annotated[Caller, Depends(_caller)]
AuthenticatedDep = Annotated[Caller, Depends(_authenticated)]  # the route's service admits it
AccountsDep = Annotated[AccountService, Depends(_accounts)]
TokensDep = Annotated[TokenService, Depends(_tokens)]
UsageDep = Annotated[UsageRecorder, Depends(_usage)]
ImagesDep = Annotated[ImageService, Depends(_images)]
InvitesDep = Annotated[InviteService, Depends(_invites)]
ClientDep = Annotated[str, Depends(_client)]
FilesDep = Annotated[FileService, Depends(_files)]
EmbeddingsDep = Annotated[EmbeddingService, Depends(_embeddings)]
DeploymentsDep = Annotated[DeploymentMonitor, Depends(_deployments)]
AuditDep = Annotated[AuditLog, Depends(_audit)]
RequestLogDep = Annotated[RequestLog, Depends(_request_log)]
MailDep = Annotated[AccountMail, Depends(_mail)]
GroupsDep = Annotated[GroupService, Depends(_groups)]
CodesDep = Annotated[RedemptionService, Depends(_codes)]
SignedInDep = Annotated[SignedIn, Depends(_signed_in)]
AdminDep = Annotated[SignedIn, Depends(_admin)]
