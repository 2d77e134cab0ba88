"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import CallerDep, RegistryDep
from chatgate.api.openapi import raises
from chatgate.errors import ModelNotFound
from chatgate.protocol.models import Model, ModelList

router = APIRouter()


@router.get("/models", response_model=ModelList)
async def list_models(caller: CallerDep, registry: RegistryDep) -> JSONResponse:
    principal = caller.principal
    return JSONResponse(
        registry.model_list(principal.allowed_models, principal.group_models).model_dump(mode="json")
    )


@router.get("/models/{model_id:path}", response_model=Model, responses=raises(ModelNotFound))
async def get_model(model_id: str, caller: CallerDep, registry: RegistryDep) -> JSONResponse:
    principal = caller.principal
    model = registry.describe(model_id, principal.allowed_models, principal.group_models)
    return JSONResponse(model.model_dump(mode="json"))
