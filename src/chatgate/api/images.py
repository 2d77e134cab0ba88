"""``POST /v1/images/generations`` (and the same under ``/openai``)."""

from dataclasses import replace

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import AuthenticatedDep, ImagesDep
from chatgate.api.openapi import METERED, raises
from chatgate.errors import EngineFailure, InvalidImage, NotImplementedFeature
from chatgate.protocol.images import ImageGenerationRequest, ImagesResponse

router = APIRouter()


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    # ContextLengthExceeded (in METERED): the prompt, for the base model that plans the image.
    responses=raises(*METERED, NotImplementedFeature, InvalidImage, (EngineFailure, "engine_error")),
)
async def create_image(
    body: ImageGenerationRequest, caller: AuthenticatedDep, images: ImagesDep
) -> JSONResponse:
    response, headers = await images.generate(replace(caller, api="images.generations"), body)
    return JSONResponse(response.model_dump(mode="json"), headers=headers)
