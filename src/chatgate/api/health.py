"""Operators' endpoints: ``/healthz`` (alive), ``/readyz`` (every model can be served), ``/metrics``.

``/healthz`` is open and says only that the server is up. ``/readyz`` is open too but, without the
master key, says only whether it is ready (its status: 200 or 503); its detail (each model's
deployments, their addresses and state) and ``/metrics`` need the master key, since they describe
the operator's upstreams. With the master key ``/healthz`` adds each model's engine load.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from chatgate.api.deps import RegistryDep, services_of
from chatgate.api.openapi import raises
from chatgate.errors import AuthError
from chatgate.protocol.health import Health, Readiness
from chatgate.services.auth import AuthService

router = APIRouter()

Authorization = Annotated[str | None, Header()]


def _is_operator(request: Request, authorization: str | None) -> bool:
    """Whether the request carries the master key (checked without touching the database)."""
    auth: AuthService = services_of(request).auth
    return auth.is_master(authorization)


@router.get("/healthz", response_model=Health)
async def healthz(
    request: Request, registry: RegistryDep, authorization: Authorization = None
) -> JSONResponse:
    if _is_operator(request, authorization):
        return JSONResponse({"status": "ok", "models": registry.stats()})
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Some model has no deployment up."}},
)
async def readyz(
    request: Request, registry: RegistryDep, authorization: Authorization = None
) -> JSONResponse:
    """503 when some model has no deployment up; with the master key, the body says which are."""
    health = registry.health()
    ready = all(any(d["up"] for d in deployments) for deployments in health.values())
    status = 200 if ready else 503
    if _is_operator(request, authorization):
        return JSONResponse({"ready": ready, "models": health}, status_code=status)
    return JSONResponse({"ready": ready}, status_code=status)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    response_description="Prometheus' text exposition format (version 0.0.4).",
    responses=raises(AuthError),  # without the master key (checked by hand, not a token looked up)
)
async def metrics(
    request: Request, registry: RegistryDep, authorization: Authorization = None
) -> PlainTextResponse:
    if not _is_operator(request, authorization):
        raise AuthError("The metrics need the master key: send it as 'Authorization: Bearer KEY'.")
    text = services_of(request).chat.metrics.render(registry)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
