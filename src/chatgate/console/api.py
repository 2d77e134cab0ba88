"""The console's own JSON endpoints: a user's usage and request log, and the admin's model view."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from chatgate import ranges
from chatgate.api.deps import AdminDep, RegistryDep, SignedInDep, UsageDep
from chatgate.protocol.health import ModelDeploymentsList
from chatgate.protocol.usage import RequestLog, UsageSummary

router = APIRouter()


@router.get("/usage", response_model=UsageSummary)
async def my_usage(signed_in: SignedInDep, usage: UsageDep) -> JSONResponse:
    return JSONResponse(await usage.user_summary(signed_in.account.id))


@router.get("/usage/requests", response_model=RequestLog)
async def my_requests(
    signed_in: SignedInDep,
    usage: UsageDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=ranges.PAGE_OFFSET.high)] = 0,
    model: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
) -> JSONResponse:
    page = await usage.requests(signed_in.account.id, limit=limit, offset=offset, model=model, status=status)
    return JSONResponse(page)


@router.get("/admin/models", response_model=ModelDeploymentsList)
async def admin_models(admin: AdminDep, registry: RegistryDep) -> JSONResponse:
    health = registry.health()
    models = [
        {"id": model.id, "owned_by": model.owned_by, "type": model.type, "deployments": health[model.id]}
        for model in registry.model_list().data
    ]
    return JSONResponse({"data": models})
