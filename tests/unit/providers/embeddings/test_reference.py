"""The engine's vectors against an independent forward pass: the model's own weights and tokenizer,
the Hugging Face BertModel computation written out in float64 numpy, mean pooling, unit length.

Nothing here shares code with the engine: the weights are read from the package's safetensors file
by this test's own reader, and the tokenizer is the reference one (``tokenizers`` on the model's
tokenizer.json, as sentence-transformers runs it).
"""

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
from tokenizers import Tokenizer

from chatgate.providers.embeddings import assets
from chatgate.providers.embeddings.engine import Encoder

# Ordinary and awkward text: accents to strip, CJK characters split apart, Hangul decomposed, emoji
# and a word longer than 100 characters (both [UNK]), control characters, odd spacing, and the
# spelling of a special token (text, not the token: the reference is told the same).
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo wörld! Café naïve façade, Ünïcödé ÀÉÎÕÜ.",
    "中文字符测试 and mixed text, 日本語も少し。",
    "한국어 문장도 섞어 봅니다: 걘 갚을 거야.",
    "emoji 😀 test 🚀 with ligature ﬁ and ß",
    "  multiple   spaces\tand\ttabs\n\nnew\u200blines\x07 ",
    "supercalifragilisticexpialidocious " + "x" * 150 + " antidisestablishmentarianism",
    "Don't stop-believing: e-mail me @ foo@bar.com, OK?? 3.14159 [SEP] [CLS]",
    "a",
]


erf = np.vectorize(math.erf)  # exact


def _weights(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    out = {}
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] == "F32":
            begin, end = info["data_offsets"]
            data = np.frombuffer(raw[8 + size + begin : 8 + size + end], dtype="<f4")
            out[name] = data.reshape(info["shape"]).astype(np.float64)
    return out


class Reference:
    def __init__(self, folder: Path) -> None:
        self.w = _weights(folder / "model.safetensors")
        self.config = json.loads((folder / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads to and cuts at 128; sentence-transformers does neither here
        self.tokenizer.no_truncation()
        self.tokenizer.encode_special_tokens = True

    def _norm(self, x: Any, prefix: str) -> Any:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        eps = self.config["layer_norm_eps"]
        return (x - mean) / np.sqrt(var + eps) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def _linear(self, x: Any, prefix: str) -> Any:
        return x @ self.w[prefix + ".weight"].T + self.w[prefix + ".bias"]

    def embed(self, text: str) -> tuple[list[int], Any]:
        with threadpool_limits(1):
            return self._embed(text)

    def _embed(self, text: str) -> tuple[list[int], Any]:
        ids = self.tokenizer.encode(text).ids
        n, heads = len(ids), self.config["num_attention_heads"]
        d = self.config["hidden_size"] // heads
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = self._norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (
                self._linear(x, p + f"attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            attended = self._linear(
                context.transpose(1, 0, 2).reshape(n, heads * d), p + "attention.output.dense"
            )
            x = self._norm(x + attended, p + "attention.output.LayerNorm")
            h = self._linear(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))  # erf GELU, as BertModel's
            x = self._norm(x + self._linear(h, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(axis=0)
        return ids, pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def reference() -> Reference:
    asset = assets.resolve("all-minilm-l6-v2")
    return Reference(assets.package_dir(asset))


def test_vectors_and_token_counts_match_the_reference(
    reference: Reference, loaded: tuple[Encoder, int]
) -> None:
    encoder, _ = loaded
    ids = encoder.tokenize(TEXTS)
    one_batch = encoder.encode(ids)  # padded together
    for i, text in enumerate(TEXTS):
        want_ids, want = reference.embed(text)
        assert ids[i] == want_ids, text
        alone = encoder.encode([ids[i]])[0]
        assert float(alone @ want) > 0.99999, text
        assert float(one_batch[i] @ want) > 0.99999, text  # padding changes nothing
        assert abs(float(np.linalg.norm(alone)) - 1) < 1e-5


def test_special_token_spellings_are_text(loaded: tuple[Encoder, int]) -> None:
    encoder, _ = loaded
    (ids,) = encoder.tokenize(["[SEP]"])
    assert ids[0] == 101 and ids[-1] == 102 and 102 not in ids[1:-1] and len(ids) > 3


def test_a_model_given_by_path_runs_the_same(model_dir: Path, loaded: tuple[Encoder, int]) -> None:
    """A directory with model.onnx and tokenizer.json (here, the asset's own), its pooling given."""
    from chatgate.config import LocalEmbeddingDeployment
    from chatgate.providers.embeddings import local

    deployment = LocalEmbeddingDeployment(kind="local_embedding", path=model_dir, max_input_tokens=128)
    by_path, longest = local.load(deployment, model_dir.parent)
    ids = by_path.tokenize(TEXTS[:2])
    assert longest == 128 and ids == loaded[0].tokenize(TEXTS[:2])
    assert np.allclose(by_path.encode(ids), loaded[0].encode(ids), atol=1e-6)
