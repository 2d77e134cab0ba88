"""What a request may hold, checked before anything is reserved: each refusal a 400 naming its field."""

import numpy as np
import pytest

from chatgate.errors import InvalidRequest
from chatgate.protocol.embeddings import EmbeddingRequest
from chatgate.providers.embeddings.base import Limits, check_dimensions, plan, shorten
from chatgate.providers.embeddings.engine import Encoder
from tests.unit.providers.embeddings.test_reference import TEXTS

LIMITS = Limits(max_inputs=4, max_input_tokens=8, max_request_tokens=20)


def request(inputs: object, **extra: object) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "m", "input": inputs, **extra})


@pytest.mark.parametrize(
    ("inputs", "param"),
    [
        ([], "input"),
        (["a"] * 5, "input"),
        ("", "input"),
        (["ok", ""], "input[1]"),
        (["ok", "\ud800"], "input[1]"),
        ([[1, 2], []], "input[1]"),
        ([1] * 9, "input"),
        ([[1], [1] * 9], "input[1]"),
        ([[1, 2], [3, 70000]], "input[1][1]"),
        ([-1], "input[0]"),
        ([[1] * 8, [1] * 8, [1] * 8], "input"),  # 24 tokens in all, over 20
        (["x" * 200], "input"),  # 200 bytes: even a quarter of that is over 20 tokens
    ],
)
def test_refusals_name_the_field(inputs: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan(request(inputs), LIMITS, vocabulary=30522)
    assert caught.value.param == param


def test_bounds_and_shapes() -> None:
    text = plan(request("héllo"), LIMITS)
    assert (text.texts, text.bound, text.single) == (["héllo"], 6 + 2, True)
    ids = plan(request([[1, 2, 3], [4]]), LIMITS)
    assert (ids.token_ids, ids.bound, ids.estimate, ids.single) == ([[1, 2, 3], [4]], 4, 4, False)
    one = plan(request([5, 6]), LIMITS)
    assert (one.token_ids, one.single) == ([[5, 6]], True)


def test_the_bound_covers_the_exact_count(loaded: tuple[Encoder, int]) -> None:
    """Reserved on bytes, before tokenizing: never less than the tokenizer then counts."""
    encoder, _ = loaded
    limits = Limits(max_inputs=100, max_input_tokens=512, max_request_tokens=10**6)
    for text in TEXTS:
        counted = len(encoder.tokenize([text])[0])
        assert plan(request(text), limits).bound >= counted, text


def test_dimensions() -> None:
    check_dimensions(None, 384, False, "m")
    check_dimensions(384, 384, False, "m")
    for asked, native, matryoshka in [(256, 384, False), (512, 384, True), (8, None, False)]:
        with pytest.raises(InvalidRequest) as caught:
            check_dimensions(asked, native, matryoshka, "m")
        assert caught.value.param == "dimensions"
    check_dimensions(256, 768, True, "m")
    vectors = np.array([[3.0, 4.0, 12.0]], np.float32) / 13
    cut = shorten(vectors, 2)
    assert cut.shape == (1, 2) and np.allclose(cut, [[0.6, 0.8]])
    assert shorten(vectors, None) is vectors
