"""``GET /healthz``: the process is up, with each model's engine load (busy, queued, cancelled)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import RegistryDep

router = APIRouter()


@router.get("/healthz")
async def healthz(registry: RegistryDep) -> JSONResponse:
    return JSONResponse({"status": "ok", "models": registry.stats()})
