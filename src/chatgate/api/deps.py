"""Route dependencies, read from ``app.state`` (built once in create_app)."""

from typing import Annotated

from fastapi import Depends, Header, Request

from chatgate.services.auth import AuthService
from chatgate.services.catalogue import ModelRegistry
from chatgate.services.chat import ChatService


def _chat(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    auth: AuthService = request.app.state.auth
    return auth.authenticate(authorization)


ChatDep = Annotated[ChatService, Depends(_chat)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
CallerDep = Annotated[str, Depends(_caller)]
