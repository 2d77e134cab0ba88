"""An upstream's embeddings answer: floats or base64, in any order, checked before anything is charged."""

import base64

import numpy as np
import pytest

from chatgate.providers.embeddings.upstream import _answer


def b64(values: list[float]) -> str:
    return base64.b64encode(np.array(values, "<f4").tobytes()).decode()


def test_floats_base64_and_order() -> None:
    body = {
        "data": [
            {"index": 1, "embedding": b64([0.5, 0.25])},
            {"index": 0, "embedding": [1.0, -1.0]},
        ],
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    vectors, tokens = _answer(body, 2)
    assert vectors.tolist() == [[1.0, -1.0], [0.5, 0.25]] and tokens == 7


@pytest.mark.parametrize(
    "usage", [None, {}, {"prompt_tokens": None}, {"prompt_tokens": -1}, {"prompt_tokens": True}]
)
def test_usage_missing_or_malformed_is_none(usage: object) -> None:
    body = {"data": [{"embedding": [1.0]}], **({"usage": usage} if usage is not None else {})}
    assert _answer(body, 1)[1] is None


@pytest.mark.parametrize(
    "data",
    [
        [{"embedding": [1.0]}],  # one vector for two inputs
        [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}],  # the same index twice
        [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}],  # lengths differ
        [{"index": 0, "embedding": [1.0]}, {"index": 5, "embedding": [2.0]}],
        [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": "not base64!"}],
        [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": ["a"]}],
        [{"index": 0, "embedding": []}, {"index": 1, "embedding": []}],
        [{"index": 0, "embedding": [float("nan")]}, {"index": 1, "embedding": [1.0]}],
    ],
)
def test_malformed_answers_are_refused(data: object) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        _answer({"data": data}, 2)
