"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import CallerDep, RegistryDep

router = APIRouter()


@router.get("/models")
async def list_models(caller: CallerDep, registry: RegistryDep) -> JSONResponse:
    return JSONResponse(registry.model_list(caller.principal.allowed_models).model_dump(mode="json"))


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, caller: CallerDep, registry: RegistryDep) -> JSONResponse:
    return JSONResponse(registry.describe(model_id, caller.principal.allowed_models).model_dump(mode="json"))
