"""The console's admin endpoints under ``/api/admin``: deployments (figures, test, disable), the
request log of every user (paged, CSV), and the audit log. Admins only; changes need the CSRF header."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from chatgate.api.deps import AdminDep, AuditDep, DeploymentsDep, RequestLogDep
from chatgate.api.openapi import raises
from chatgate.errors import InvalidRequest, NotFound
from chatgate.services.audit import Actor
from chatgate.storage.requestlog import Filters

router = APIRouter()


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---- deployments ------------------------------------------------------------------------------


class DeploymentView(BaseModel):
    id: str
    model: str
    name: str
    kind: Literal["local", "upstream"]
    weight: int
    state: Literal["up", "cooling", "disabled"]
    automatic: bool  # disabled by the failure policy rather than by hand
    reason: str | None
    changed_at: datetime | None
    in_flight: int  # across every live replica
    requests: int  # over the last 15 minutes, every replica
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    last_error: str | None
    last_error_at: datetime | None


class DeploymentList(BaseModel):
    data: list[DeploymentView]


class Switch(Body):
    disabled: bool


class TestResult(BaseModel):
    ok: bool
    latency_ms: int
    reply: str | None
    error: str | None


@router.get("/deployments")
async def deployments(admin: AdminDep, monitor: DeploymentsDep) -> DeploymentList:
    return DeploymentList.model_validate({"data": await monitor.overview()})


@router.post("/deployments/{deployment_id:path}/test", responses=raises(NotFound))
async def test_deployment(deployment_id: str, admin: AdminDep, monitor: DeploymentsDep) -> TestResult:
    return TestResult.model_validate((await monitor.test(deployment_id)).as_dict())


@router.post("/deployments/{deployment_id:path}/disable", responses=raises(NotFound))
async def disable_deployment(
    deployment_id: str, body: Switch, admin: AdminDep, monitor: DeploymentsDep
) -> DeploymentView:
    await monitor.set_disabled(deployment_id, body.disabled, Actor.admin(admin.account.id))
    view = next(d for d in await monitor.overview() if d["id"] == deployment_id)
    return DeploymentView.model_validate(view)


# ---- the request log ----------------------------------------------------------------------------


class RequestRow(BaseModel):
    time: datetime
    trace_id: str
    user_id: int | None
    email: str | None
    token_id: int | None
    token: str | None  # its prefix, as the token lists show it
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: int
    latency_ms: int
    status: str
    error_code: str | None
    price_prompt: int | None  # the catalogue's credits per million tokens it was charged at
    price_completion: int | None
    price_multiplier: float | None  # its user's group multiplier then


class RequestPage(BaseModel):
    total: int
    data: list[RequestRow]


class RequestQuery(BaseModel):
    """The request log's filters: a user by id or email, a token by id or prefix, a time range."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, max_length=320)
    token: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=200)
    status: Literal["ok", "error", "cancelled", ""] | None = None
    since: datetime | None = None
    until: datetime | None = None


class RequestPageQuery(RequestQuery):
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=10_000_000)


async def _filters(query: RequestQuery, log: RequestLogDep) -> Filters:
    return await log.filters(
        user=query.user,
        token=query.token,
        model=query.model,
        status=query.status,
        since=query.since,
        until=query.until,
    )


@router.get("/requests", responses=raises(InvalidRequest, NotFound))
async def requests(
    admin: AdminDep,
    log: RequestLogDep,
    query: Annotated[RequestPageQuery, Query()],
) -> RequestPage:
    page = await log.page(await _filters(query, log), limit=query.limit, offset=query.offset)
    return RequestPage.model_validate(page)


@router.get(
    "/requests.csv",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **raises(InvalidRequest, NotFound),
    },
)
async def requests_csv(
    admin: AdminDep, log: RequestLogDep, query: Annotated[RequestQuery, Query()]
) -> StreamingResponse:
    filters = await _filters(query, log)  # a bad filter is an enveloped 4xx, before any byte is sent
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(
        log.csv(filters),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="chatgate-requests-{stamp}.csv"'},
    )


# ---- the audit log ------------------------------------------------------------------------------


class AuditRow(BaseModel):
    id: int
    time: datetime
    actor: Literal["admin", "operator", "chatgate"]
    actor_id: int | None
    actor_email: str | None
    action: str
    target: str
    detail: dict[str, object]


class AuditPage(BaseModel):
    total: int
    data: list[AuditRow]


@router.get("/audit", responses=raises(InvalidRequest))
async def audit(
    admin: AdminDep,
    log: AuditDep,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> AuditPage:
    page = await log.page(action=action, since=since, until=until, limit=limit, offset=offset)
    return AuditPage.model_validate(page)
