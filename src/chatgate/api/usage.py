"""``GET /v1/usage``: what the calling token has used, with per-day and per-model totals."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import CallerDep, UsageDep
from chatgate.protocol.usage import UsageSummary

router = APIRouter()


@router.get("/usage", response_model=UsageSummary)
async def get_usage(caller: CallerDep, usage: UsageDep) -> JSONResponse:
    return JSONResponse(await usage.summary(caller.principal))
