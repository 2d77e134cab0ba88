"""What the operators' endpoints report: liveness, readiness and each model's deployments."""

from typing import Literal

from pydantic import ConfigDict, Field

from chatgate.protocol.base import WireModel


class DeploymentHealth(WireModel):
    """One deployment of a model, with its load figures (which vary with the kind of deployment)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, int | float]

    deployment: str
    up: bool
    id: str | None = Field(default=None, description="A routed deployment's stable id.")
    state: Literal["up", "cooling", "disabled"] | None = Field(
        default=None, description="A routed deployment's state."
    )


class Health(WireModel):
    status: Literal["ok"] = "ok"
    models: dict[str, dict[str, int]] | None = Field(
        default=None, description="Load figures per model (with the master key only)."
    )


class Readiness(WireModel):
    ready: bool = Field(description="Whether every model has a deployment up.")
    models: dict[str, list[DeploymentHealth]] | None = Field(
        default=None, description="Each model's deployments (with the master key only)."
    )


class ModelDeployments(WireModel):
    id: str
    owned_by: str
    type: Literal["chat", "embedding"] = Field(description="Which API serves the model.")
    deployments: list[DeploymentHealth]


class ModelDeploymentsList(WireModel):
    data: list[ModelDeployments]
