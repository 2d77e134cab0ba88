"""The engine protocol: every provider event and every domain error comes through a line unchanged."""

import pytest

from chatgate.errors import ChatgateError, EngineBusy, InvalidRequest, NotImplementedFeature, UpstreamRefused
from chatgate.protocol.responses import Annotation, TokenLogprob, TopLogprob, UrlCitation
from chatgate.providers.base import (
    Accepted,
    Citations,
    Finished,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from chatgate.providers.shared_engine import wire

LOGPROB = TokenLogprob(
    token="Hi",
    logprob=-0.25,
    bytes=[72, 105],
    top_logprobs=[TopLogprob(token="Hi", logprob=-0.25, bytes=[72, 105])],
)
CITATION = Annotation(
    type="url_citation",
    url_citation=UrlCitation(url="https://example.com/", title="Example", start_index=0, end_index=4),
)
EVENTS: list[ProviderEvent] = [
    Accepted(prompt_tokens=31, system_fingerprint="fp_0123456789"),
    TextDelta("Hello \u00e9\U0001f600", index=1, logprobs=[LOGPROB], tokens=2, refusal=False),
    TextDelta("no", refusal=True),
    ToolCallDelta(call_index=0, arguments='{"a": 1}', call_id="call_1", name="f", index=0, tokens=5),
    Citations([CITATION], index=0),
    Finished(reason="tool_calls", prompt_tokens=31, completion_tokens=12, index=1),
    UsageReport(prompt_tokens=31, completion_tokens=12, extra_cost=3),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_comes_through_whole(event: ProviderEvent) -> None:
    line = wire.encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.decode(line) == event


def test_a_full_queue_is_the_same_429_with_its_retry_after() -> None:
    busy = EngineBusy("All 2 engine slots are busy.", retry_after=7)
    decoded = wire.decode(wire.encode_error(busy))
    assert isinstance(decoded, EngineBusy)
    assert (decoded.message, decoded.retry_after, decoded.code, str(decoded)) == (
        busy.message,
        7,
        "too_many_requests",
        busy.message,
    )


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("logit_bias names token 99999999.", param="logit_bias"),
        NotImplementedFeature("'audio' is not supported by this model.", param="audio"),
        UpstreamRefused("slow down", status=429, code="rate_limit_exceeded", retry_after="3"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_refusals_keep_their_class_param_and_code(error: ChatgateError) -> None:
    decoded = wire.decode(wire.encode_error(error))
    assert type(decoded) is type(error)
    assert vars(decoded) == vars(error)


def test_an_unknown_error_class_is_still_a_domain_error() -> None:
    decoded = wire.decode(
        b'{"type": "error", "class": "FromTheFuture", "attributes": {"message": "m", "code": "c"}}'
    )
    assert isinstance(decoded, ChatgateError)
    assert (decoded.message, decoded.code) == ("m", "c")


@pytest.mark.parametrize(
    "line", [b"not json\n", b'{"no": "type"}\n', b'{"type": "Nope"}\n', b'{"type": "Accepted", "x": 1}\n']
)
def test_a_line_of_anything_else_is_a_wire_error(line: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(line)
