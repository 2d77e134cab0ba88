"""The routable models: public names and aliases resolved to the provider that serves them."""

from dataclasses import dataclass

from chatgate.config import Price
from chatgate.errors import InvalidRequest, ModelNotFound
from chatgate.protocol.models import Model, ModelList
from chatgate.providers.base import AnyProvider
from chatgate.providers.embeddings.base import Embedder
from chatgate.providers.router import RouterProvider


@dataclass(frozen=True)
class Route:
    name: str
    owned_by: str
    created: int
    provider: AnyProvider
    fingerprint: str | None  # system_fingerprint, unless the deployment that answers tells its own
    price: Price
    vision: bool = False  # its model reads images itself; others get them described in text
    handles_images: bool = False  # its provider takes image parts as sent (the drawing models)


@dataclass(frozen=True)
class EmbeddingRoute:
    name: str
    owned_by: str
    created: int
    embedder: Embedder
    price: Price  # its prompt price is what an input token costs


class ModelRegistry:
    def __init__(
        self, routes: list[Route], aliases: dict[str, str], embeddings: list[EmbeddingRoute] | None = None
    ) -> None:
        self._routes = {route.name: route for route in routes}
        self._embeddings = {route.name: route for route in embeddings or []}
        self._aliases = aliases

    def resolve(self, name: str) -> Route:
        """A chat model; an embedding model's name is refused, saying where it belongs."""
        public = self._aliases.get(name, name)
        route = self._routes.get(public)
        if route is None:
            if public in self._embeddings:
                raise InvalidRequest(
                    f"The model '{name}' is an embedding model: call POST /v1/embeddings with it.",
                    param="model",
                    code="model_not_supported",
                )
            raise _not_found(name)
        return route

    def resolve_embedding(self, name: str) -> EmbeddingRoute:
        """An embedding model; a chat model's name is refused, saying so."""
        public = self._aliases.get(name, name)
        route = self._embeddings.get(public)
        if route is None:
            if public in self._routes:
                raise InvalidRequest(
                    f"The model '{name}' is a chat model and makes no embeddings: use an embedding model "
                    '(GET /v1/models lists them with "type": "embedding").',
                    param="model",
                    code="model_not_supported",
                )
            raise _not_found(name)
        return route

    def describe(
        self, name: str, allowed: tuple[str, ...] | None = None, group: tuple[str, ...] | None = None
    ) -> Model:
        """One model; a token (or a group) limited to other models is told it does not exist, as in
        the list."""
        public = self._aliases.get(name, name)
        if public not in self or public not in self.visible(allowed, group):
            raise _not_found(name)
        return self._model(public)

    def model_list(
        self, allowed: tuple[str, ...] | None = None, group: tuple[str, ...] | None = None
    ) -> ModelList:
        """The routable models, chat then embedding; for a token limited to some models (by name or
        alias), or a user in a group that sees only some, just those."""
        names = self.visible(allowed, group)
        return ModelList(data=[self._model(n) for n in [*self._routes, *self._embeddings] if n in names])

    def _model(self, name: str) -> Model:
        route = self._routes.get(name)
        if route is not None:
            return Model(id=route.name, created=route.created, owned_by=route.owned_by)
        embedding = self._embeddings[name]
        return Model(id=name, created=embedding.created, owned_by=embedding.owned_by, type="embedding")

    def canonical(self, name: str) -> str:
        """The public name of a chat or embedding model, given its name or an alias."""
        public = self._aliases.get(name, name)
        if public not in self:
            raise _not_found(name)
        return public

    def visible(self, allowed: tuple[str, ...] | None, group: tuple[str, ...] | None = None) -> set[str]:
        """The public names of the models (chat and embedding) a token's allow-list and its user's
        group both permit."""
        names = set(self._routes) | set(self._embeddings)
        if allowed is not None:
            names &= self._permitted(allowed)
        if group is not None:
            names &= self._permitted(group)
        return names

    def _permitted(self, allowed: tuple[str, ...]) -> set[str]:
        return {self._aliases.get(name, name) for name in allowed}

    def names(self) -> frozenset[str]:
        """Every model's public name and aliases, chat and embedding."""
        return frozenset((*self._routes, *self._embeddings, *self._aliases))

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a model's public name, chat or embedding (aliases are not)."""
        return name in self._routes or name in self._embeddings

    @property
    def routes(self) -> dict[str, Route]:
        return dict(self._routes)

    @property
    def embedding_routes(self) -> dict[str, EmbeddingRoute]:
        return dict(self._embeddings)

    def health(self) -> dict[str, list[dict[str, object]]]:
        chat = {name: route.provider.health() for name, route in self._routes.items()}
        return chat | {name: route.embedder.health() for name, route in self._embeddings.items()}

    def stats(self) -> dict[str, dict[str, int]]:
        chat = {name: route.provider.stats() for name, route in self._routes.items()}
        return chat | {name: route.embedder.stats() for name, route in self._embeddings.items()}

    @property
    def providers(self) -> list[AnyProvider]:
        return [route.provider for route in self._routes.values()]

    @property
    def embedders(self) -> list[Embedder]:
        return [route.embedder for route in self._embeddings.values()]

    @property
    def routers(self) -> list[RouterProvider]:
        """The routers of the models served by deployments (models built on others have none)."""
        return [
            route.provider for route in self._routes.values() if isinstance(route.provider, RouterProvider)
        ]


def _not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
