"""The default embedding model, made and loaded once for the whole test session."""

from pathlib import Path

import pytest

from chatgate.config import LocalEmbeddingDeployment
from chatgate.providers.embeddings import assets, local
from chatgate.providers.embeddings.engine import Encoder

ROOT = Path(__file__).resolve().parents[4]
MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The converted model, as `make setup` leaves it in the repository's model directory."""
    return assets.ensure(assets.resolve(MODEL), ROOT / ".chatgate" / "models")


@pytest.fixture(scope="session")
def loaded(model_dir: Path) -> tuple[Encoder, int]:
    encoder, longest = local.load(
        LocalEmbeddingDeployment(kind="local_embedding", asset=MODEL), model_dir.parent
    )
    return encoder, longest
