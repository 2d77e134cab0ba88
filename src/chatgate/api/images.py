"""``POST /v1/images/generations`` (and the same under ``/openai``)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import CallerDep, ImagesDep
from chatgate.protocol.images import ImageGenerationRequest

router = APIRouter()


@router.post("/images/generations")
async def create_image(body: ImageGenerationRequest, caller: CallerDep, images: ImagesDep) -> JSONResponse:
    response, headers = await images.generate(caller, body)
    return JSONResponse(response.model_dump(mode="json"), headers=headers)
