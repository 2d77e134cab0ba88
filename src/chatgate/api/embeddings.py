"""``POST /v1/embeddings`` (and the same under ``/openai``).

The body is read as the chat route reads it (``api.body.parse``): JSON whatever its Content-Type
says, strict types, Unicode checked. The caller first (401, or 429 if its token has no credits left),
then the body (400 naming the field). A client that leaves before its vectors are ready cancels the
request: the batches not yet started are dropped and what was reserved comes back, less the inputs
if the engine had read them (see services/embeddings.py).
"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatgate.api.body import parse
from chatgate.api.cancel import unless_gone
from chatgate.api.deps import AuthenticatedDep, EmbeddingsDep
from chatgate.api.openapi import METERED, described, raises
from chatgate.protocol.embeddings import EmbeddingList, EmbeddingRequest

router = APIRouter()


@router.post(
    "/embeddings",
    response_model=EmbeddingList,
    responses=raises(*METERED),
    # The body is read by hand, as chat's is: described here instead.
    openapi_extra=described(body=EmbeddingRequest),
)
async def create_embeddings(
    request: Request, caller: AuthenticatedDep, embeddings: EmbeddingsDep
) -> Response:
    embeddings.check_credits(caller)  # a token with nothing left is refused before its body is read
    body = parse(EmbeddingRequest, await request.body())

    async def work() -> Response:
        answer, headers = await embeddings.create(caller, body)
        return Response(answer.model_dump_json(), media_type="application/json", headers=headers)

    return await unless_gone(request, work)
