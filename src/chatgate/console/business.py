"""The console's admin endpoints for selling: top-up codes (create, list, disable, CSV) and price
groups (create, change, move users), under ``/api/admin``. Admins only; changes need the CSRF header."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from chatgate.api.deps import AdminDep, CodesDep, GroupsDep
from chatgate.api.openapi import raises
from chatgate.errors import Conflict, InvalidRequest, NotFound
from chatgate.protocol.base import INT64_MAX, INT64_MIN
from chatgate.services.audit import Actor

router = APIRouter()

State = Literal["unused", "used", "expired", "disabled"]
RowId = Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---- codes --------------------------------------------------------------------------------------


class NewCodes(Body):
    credits: int = Field(ge=1, le=10**12)
    count: int = Field(default=1, ge=1, le=10_000)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    note: str | None = Field(default=None, max_length=200)


class CreatedCodes(BaseModel):
    codes: list[str]  # in the clear, this once: only their hashes are kept


class CodeView(BaseModel):
    id: int
    code: str  # its first characters
    credits: int
    state: State
    note: str | None
    created_at: datetime
    expires_at: datetime | None
    redeemed_at: datetime | None
    redeemed_by: str | None  # the email of who redeemed it


class CodePage(BaseModel):
    total: int
    data: list[CodeView]


@router.post("/codes", status_code=201, responses=raises(InvalidRequest))
async def create_codes(body: NewCodes, admin: AdminDep, codes: CodesDep) -> CreatedCodes:
    made = await codes.create(
        credits=body.credits,
        count=body.count,
        expires_in_days=body.expires_in_days,
        note=body.note,
        actor=Actor.admin(admin.account.id),
    )
    return CreatedCodes(codes=made)


@router.get("/codes", responses=raises(InvalidRequest))
async def list_codes(
    admin: AdminDep,
    codes: CodesDep,
    state: State | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> CodePage:
    return CodePage.model_validate(await codes.page(state=state, limit=limit, offset=offset))


@router.get(
    "/codes.csv",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **raises(InvalidRequest),
    },
)
async def codes_csv(admin: AdminDep, codes: CodesDep, state: State | None = None) -> StreamingResponse:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(
        codes.csv(state=state),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="chatgate-codes-{stamp}.csv"'},
    )


@router.post("/codes/{code_id}/disable", status_code=204, responses=raises(NotFound))
async def disable_code(code_id: RowId, admin: AdminDep, codes: CodesDep) -> None:
    await codes.disable(code_id, Actor.admin(admin.account.id))


# ---- groups -------------------------------------------------------------------------------------


class GroupView(BaseModel):
    name: str
    multiplier: float  # 1.0: the catalogue's prices
    models: list[str] | None  # None: every model
    description: str | None
    members: int = 0


class GroupList(BaseModel):
    data: list[GroupView]


class NewGroup(Body):
    name: str = Field(min_length=1, max_length=64)
    multiplier: float = Field(default=1.0, ge=0, le=100)
    models: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=200)


class GroupChange(Body):
    multiplier: float | None = Field(default=None, ge=0, le=100)
    models: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, max_length=64)
    all_models: bool = False  # True: every model again (models: null means "unchanged")
    description: str | None = Field(default=None, max_length=200)


class Move(Body):
    group: str = Field(min_length=1, max_length=64)


@router.get("/groups")
async def list_groups(admin: AdminDep, groups: GroupsDep) -> GroupList:
    return GroupList(data=[GroupView.model_validate(g, from_attributes=True) for g in await groups.all()])


@router.post("/groups", status_code=201, responses=raises(Conflict, InvalidRequest))
async def create_group(body: NewGroup, admin: AdminDep, groups: GroupsDep) -> GroupView:
    group = await groups.create(
        body.name,
        multiplier=body.multiplier,
        models=body.models,
        description=body.description,
        actor=Actor.admin(admin.account.id),
    )
    return GroupView.model_validate(group, from_attributes=True)


@router.patch("/groups/{name}", responses=raises(NotFound, InvalidRequest))
async def change_group(name: str, body: GroupChange, admin: AdminDep, groups: GroupsDep) -> GroupView:
    group = await groups.update(
        name,
        multiplier=body.multiplier,
        models=body.models,
        all_models=body.all_models,
        description=body.description,
        actor=Actor.admin(admin.account.id),
    )
    return GroupView.model_validate(group, from_attributes=True)


@router.post("/users/{user_id}/group", status_code=204, responses=raises(NotFound))
async def move_user(user_id: RowId, body: Move, admin: AdminDep, groups: GroupsDep) -> None:
    await groups.move(user_id, body.group, Actor.admin(admin.account.id))
