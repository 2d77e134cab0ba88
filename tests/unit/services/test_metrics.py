"""The Prometheus exposition: label values escaped so no request can break a scrape."""

from chatgate.services.catalogue import ModelRegistry
from chatgate.services.metrics import Metrics, escape


def test_label_values_are_escaped_as_the_text_format_says() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_a_hostile_label_value_stays_inside_its_sample() -> None:
    metrics = Metrics()
    hostile = 'x"}\nchatgate_requests_total{model="m"} 1e9\n# '
    metrics.request(
        model=hostile, status="error", code=None, seconds=0.1, prompt_tokens=0, completion_tokens=0
    )
    lines = metrics.render(ModelRegistry([], {})).splitlines()
    assert not any(line.startswith("chatgate_requests_total{model=") for line in lines)
    samples = [line for line in lines if line.startswith("chatgate_requests_total")]
    assert samples == [
        'chatgate_requests_total{code="",model="x\\"}\\nchatgate_requests_total{model=\\"m\\"} 1e9\\n# ",status="error"} 1'
    ]
