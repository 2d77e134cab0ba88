"""``POST /v1/images/generations`` (and the same under ``/openai``)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatgate.api.deps import CallerDep, ImagesDep
from chatgate.api.openapi import raises
from chatgate.errors import (
    Conflict,
    ContextLengthExceeded,
    EngineBusy,
    EngineFailure,
    InsufficientQuota,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    NotImplementedFeature,
    RateLimited,
    TokenMismatch,
    UpstreamFailed,
    UpstreamRefused,
    UpstreamTimeout,
)
from chatgate.protocol.images import ImageGenerationRequest, ImagesResponse

router = APIRouter()


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    responses=raises(
        TokenMismatch,
        ContextLengthExceeded,  # the prompt, for the base model that plans the image
        NotImplementedFeature,
        InvalidImage,
        ModelNotFound,
        (InvalidRequest, "model_not_supported"),  # an embedding model's name
        (Conflict, "duplicate_request"),
        InsufficientQuota,
        RateLimited,
        EngineBusy,
        (EngineFailure, "engine_error"),
        UpstreamRefused,
        UpstreamFailed,
        UpstreamTimeout,
    ),
)
async def create_image(body: ImageGenerationRequest, caller: CallerDep, images: ImagesDep) -> JSONResponse:
    response, headers = await images.generate(caller, body)
    return JSONResponse(response.model_dump(mode="json"), headers=headers)
