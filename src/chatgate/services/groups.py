"""Price groups and prices: every user is in a group (``default`` unless moved), which multiplies
the catalogue's prices for its members and may limit the models they see; the pricing a signed-in
user is shown, and what a request would cost at most.

The multiplier takes effect where credits move: metering (services/metering.py) reserves and
settles at the catalogue price times the caller's multiplier (read with the token on every
request), and the usage log records both.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from chatgate.errors import Conflict, InvalidRequest, ModelNotFound, NotFound
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import AnyProvider, Plan
from chatgate.providers.images.drawing import ImageGenerationProvider
from chatgate.services.audit import Actor, record
from chatgate.services.auth import Principal
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.metering import PERMILLE, cost
from chatgate.storage import groups, users
from chatgate.storage.database import Database
from chatgate.storage.tables import UserGroup

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_MULTIPLIER = 100  # a hundred times the list price at most
MAX_MODELS = 64


@dataclass(frozen=True)
class Group:
    name: str
    multiplier: float  # 1.0 is the catalogue's price
    models: list[str] | None  # None: every model
    description: str | None
    members: int = 0

    @classmethod
    def of(cls, row: UserGroup, members: int = 0) -> "Group":
        return cls(row.name, row.multiplier / PERMILLE, row.models, row.description, members)


def permille(multiplier: float) -> int:
    """A multiplier as stored: in thousandths, so prices are integers all the way."""
    if not 0 <= multiplier <= MAX_MULTIPLIER:
        raise InvalidRequest(f"multiplier is between 0 and {MAX_MULTIPLIER}.", param="multiplier")
    stored = round(multiplier * PERMILLE)
    if abs(stored - multiplier * PERMILLE) > 1e-6:
        raise InvalidRequest("multiplier has at most three decimals.", param="multiplier")
    return stored


def _scaled(credits: int, multiplier: int) -> float:
    return round(credits * multiplier / PERMILLE, 3)


Planner = Callable[[Route, ChatCompletionRequest], tuple[AnyProvider, Plan]]


class GroupService:
    def __init__(self, db: Database, registry: ModelRegistry, plan: Planner) -> None:
        self._db = db
        self._registry = registry
        self._plan = plan  # ChatService.plan: a request's checks and cost bound, nothing run

    def _models(self, models: list[str] | None) -> list[str] | None:
        """The catalogue's names for the models given (names or aliases), each once."""
        if models is None:
            return None
        if len(models) > MAX_MODELS:
            raise InvalidRequest(f"A group lists at most {MAX_MODELS} models.", param="models")
        names: list[str] = []
        for model in models:
            try:
                name = self._registry.canonical(model)
            except ModelNotFound as exc:
                raise InvalidRequest(f"{model!r} is not a model of the catalogue.", param="models") from exc
            if name not in names:
                names.append(name)
        return names

    async def all(self) -> list[Group]:
        async with self._db.sessions() as session:
            return [Group.of(row, n) for row, n in await groups.all_with_members(session)]

    async def create(
        self, name: str, *, multiplier: float, models: list[str] | None, description: str | None, actor: Actor
    ) -> Group:
        if not NAME.match(name):
            raise InvalidRequest(
                "A group's name is 1 to 64 lowercase letters, digits, '-' or '_'.", param="name"
            )
        stored, names = permille(multiplier), self._models(models)
        try:
            async with self._db.transaction() as session:
                if await groups.by_name(session, name=name) is not None:
                    raise Conflict(f"There is a group {name!r} already.", param="name")
                row = await groups.insert(
                    session, name=name, multiplier=stored, models=names, description=description
                )
                detail = {"multiplier": stored / PERMILLE, "models": names}
                await record(session, actor, "group.create", f"group {name}", detail)
                return Group.of(row)
        except IntegrityError as exc:  # two admins creating it at once
            raise Conflict(f"There is a group {name!r} already.", param="name") from exc

    async def update(
        self,
        name: str,
        *,
        multiplier: float | None,
        models: list[str] | None,
        all_models: bool,
        description: str | None,
        actor: Actor,
    ) -> Group:
        """Change a group's multiplier, models (``all_models``: every model again) or description."""
        async with self._db.transaction() as session:
            row = await groups.by_name(session, name=name)
            if row is None:
                raise NotFound(f"No group {name!r}.", param="name")
            detail: dict[str, Any] = {}
            if multiplier is not None:
                row.multiplier = permille(multiplier)
                detail["multiplier"] = row.multiplier / PERMILLE
            if all_models or models is not None:
                row.models = None if all_models else self._models(models)
                detail["models"] = row.models
            if description is not None:
                row.description = description
            await record(session, actor, "group.update", f"group {name}", detail)
            return Group.of(row)

    async def move(self, user_id: int, group: str, actor: Actor) -> None:
        async with self._db.transaction() as session:
            if await groups.by_name(session, name=group) is None:
                raise NotFound(f"No group {group!r}.", param="group")
            user = await users.by_id(session, user_id=user_id)
            if user is None or user.deleted_at is not None:
                raise NotFound("No such user.")
            before = user.group_name
            await groups.move(session, user_id=user_id, group=group)
            await record(session, actor, "user.group", f"user {user_id}", {"from": before, "to": group})

    async def principal(self, user_id: int) -> Principal:
        """A signed-in user as a caller, for what they see and pay (the console has no token)."""
        async with self._db.sessions() as session:
            user = await users.by_id(session, user_id=user_id)
            group = await groups.by_name(session, name=user.group_name) if user is not None else None
        if user is None or group is None:
            raise NotFound("No such user.")
        return Principal(
            user_id=user.id,
            token_id=None,
            group=group.name,
            price_multiplier=group.multiplier,
            group_models=tuple(group.models) if group.models is not None else None,
        )

    async def pricing(self, user_id: int) -> dict[str, Any]:
        """Each model the user may use, at their group's prices: credits per million prompt and
        completion tokens (input tokens for embedding models), and per image for the models that draw."""
        caller = await self.principal(user_id)
        m = caller.price_multiplier
        visible = self._registry.visible(None, caller.group_models)
        models = []
        for name, route in self._registry.routes.items():
            if name not in visible:
                continue
            drawing = route.provider if isinstance(route.provider, ImageGenerationProvider) else None
            models.append(
                {
                    "model": name,
                    "kind": "image_generation" if drawing else "chat",
                    "prompt_per_million": _scaled(route.price.prompt, m),
                    "completion_per_million": _scaled(route.price.completion, m),
                    "per_image": _scaled(drawing.image_price, m) if drawing else None,
                    "list_prompt_per_million": route.price.prompt,
                    "list_completion_per_million": route.price.completion,
                }
            )
        for name, embedding in self._registry.embedding_routes.items():
            if name in visible:  # an embedding model charges its input tokens only
                models.append(
                    {
                        "model": name,
                        "kind": "embedding",
                        "prompt_per_million": _scaled(embedding.price.prompt, m),
                        "completion_per_million": None,
                        "per_image": None,
                        "list_prompt_per_million": embedding.price.prompt,
                        "list_completion_per_million": 0,
                    }
                )
        return {"group": caller.group, "multiplier": m / PERMILLE, "data": models}

    async def estimate(self, user_id: int, request: ChatCompletionRequest) -> dict[str, Any]:
        """The most a request could cost this user: what its reservation would take. The request
        is planned as a real one is (checked, its output bounded); nothing runs."""
        caller = await self.principal(user_id)
        route = self._registry.resolve(request.model)
        caller.check_model(request.model, route.name)
        bound = self._plan(route, request)[1].bound
        credits = cost(
            route.price,
            bound.prompt_tokens,
            bound.completion_tokens,
            bound.extra_cost,
            caller.price_multiplier,
        )
        return {
            "model": route.name,
            "prompt_tokens": bound.prompt_tokens,
            "max_completion_tokens": bound.completion_tokens,
            "max_credits": credits,
            "multiplier": caller.price_multiplier / PERMILLE,
        }
