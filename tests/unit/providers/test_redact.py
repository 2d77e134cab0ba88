"""Addresses are kept out of what callers are told."""

from chatgate.providers.redact import without_addresses
from chatgate.providers.upstream import upstream_error


def test_ip_addresses_in_any_form_are_replaced() -> None:
    text = "Connect call failed ('10.0.3.7', 8000); also 10.0.3.8:8080, [fd00::7]:443 and ::1."
    assert without_addresses(text) == (
        "Connect call failed ('<address>', 8000); also <address>:8080, [<address>]:443 and <address>."
    )


def test_what_is_not_an_address_stays() -> None:
    text = "status 502 at 12:30:45, version 1.2.3, id deadbeef, [Errno 111]"
    assert without_addresses(text) == text


def test_the_callers_own_host_may_stay() -> None:
    assert without_addresses("203.0.113.9 is a private address", keep="203.0.113.9").startswith("203.0.113.9")


def test_an_upstreams_error_message_is_passed_on_without_its_addresses() -> None:
    raw = b'{"error": {"message": "backend 10.1.2.3:8000 refused (fd00::7 too)"}}'
    failed = upstream_error(502, raw, None)
    assert "10.1.2.3" not in failed.message and "fd00::7" not in failed.message
    assert "backend <address>:8000 refused" in failed.message
    refused = upstream_error(400, raw, None)
    assert "10.1.2.3" not in refused.message
