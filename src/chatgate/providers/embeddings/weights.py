"""Tensors read from a ``.safetensors`` file: an 8-byte header length, a JSON header, then raw little-endian data."""

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from chatgate.errors import AssetError

Tensors = dict[str, npt.NDArray[np.float32]]

_FLOATS: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}


def read_safetensors(path: Path) -> Tensors:
    """Every floating-point tensor of the file as float32 (integer buffers, such as BERT's
    ``position_ids``, are not weights and are skipped)."""
    raw = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + length])
    except (struct.error, ValueError) as exc:
        raise AssetError(f"{path} is not a safetensors file") from exc
    start = 8 + length
    tensors: Tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _FLOATS:
            if dtype in ("I64", "I32"):
                continue
            raise AssetError(f"{path}: tensor {name} has type {dtype}, which is not supported")
        begin, end = info["data_offsets"]
        kind = _FLOATS[dtype]
        array = np.frombuffer(raw, dtype=kind, count=(end - begin) // kind.itemsize, offset=start + begin)
        tensors[name] = array.reshape(info["shape"]).astype(np.float32)
    return tensors
