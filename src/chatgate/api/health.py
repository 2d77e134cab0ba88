"""Operators' endpoints: ``/healthz`` (alive), ``/readyz`` (every model can be served), ``/metrics``."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from chatgate.api.deps import RegistryDep, services_of
from chatgate.protocol.health import Health, Readiness

router = APIRouter()


@router.get("/healthz", response_model=Health)
async def healthz(registry: RegistryDep) -> JSONResponse:
    return JSONResponse({"status": "ok", "models": registry.stats()})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Some model has no deployment up."}},
)
async def readyz(registry: RegistryDep) -> JSONResponse:
    """503 when some model has no deployment up; the body says which deployments are."""
    health = registry.health()
    ready = all(any(d["up"] for d in deployments) for deployments in health.values())
    return JSONResponse({"ready": ready, "models": health}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    response_description="Prometheus' text exposition format (version 0.0.4).",
)
async def metrics(request: Request, registry: RegistryDep) -> PlainTextResponse:
    text = services_of(request).chat.metrics.render(registry)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
