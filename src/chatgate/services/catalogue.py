"""The routable models: public names and aliases resolved to the provider that serves them."""

from dataclasses import dataclass

from chatgate.config import Price
from chatgate.errors import ModelNotFound
from chatgate.protocol.models import Model, ModelList
from chatgate.providers.base import AnyProvider


@dataclass(frozen=True)
class Route:
    name: str
    owned_by: str
    created: int
    provider: AnyProvider
    fingerprint: str
    price: Price
    vision: bool = False  # its model reads images itself; others get them described in text
    handles_images: bool = False  # its provider takes image parts as sent (the drawing models)


class ModelRegistry:
    def __init__(self, routes: list[Route], aliases: dict[str, str]) -> None:
        self._routes = {route.name: route for route in routes}
        self._aliases = aliases

    def resolve(self, name: str) -> Route:
        route = self._routes.get(self._aliases.get(name, name))
        if route is None:
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.", param="model"
            )
        return route

    def describe(self, name: str, allowed: tuple[str, ...] | None = None) -> Model:
        """One model; a token limited to other models is told it does not exist, as in the list."""
        route = self.resolve(name)
        if allowed is not None and route.name not in self._permitted(allowed):
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.", param="model"
            )
        return Model(id=route.name, created=route.created, owned_by=route.owned_by)

    def model_list(self, allowed: tuple[str, ...] | None = None) -> ModelList:
        """The routable models; for a token limited to some models (by name or alias), just those."""
        names = self._routes.keys() if allowed is None else self._permitted(allowed)
        routes = [r for r in self._routes.values() if r.name in names]
        return ModelList(data=[Model(id=r.name, created=r.created, owned_by=r.owned_by) for r in routes])

    def _permitted(self, allowed: tuple[str, ...]) -> set[str]:
        return {self._aliases.get(name, name) for name in allowed}

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a model's public name (aliases are not)."""
        return name in self._routes

    @property
    def routes(self) -> dict[str, Route]:
        return dict(self._routes)

    def health(self) -> dict[str, list[dict[str, object]]]:
        return {name: route.provider.health() for name, route in self._routes.items()}

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: route.provider.stats() for name, route in self._routes.items()}

    @property
    def providers(self) -> list[AnyProvider]:
        return [route.provider for route in self._routes.values()]
