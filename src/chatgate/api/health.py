"""``GET /healthz``: the process is up and its models are loaded."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import RegistryDep

router = APIRouter()


@router.get("/healthz")
async def healthz(registry: RegistryDep) -> JSONResponse:
    return JSONResponse({"status": "ok", "models": [m.id for m in registry.model_list().data]})
