"""The client address per-address limits count against: the peer, or what trusted proxies say."""

import ipaddress

from chatgate.api.client import ClientAddresses, address_key
from chatgate.config import Settings

TRUSTED = ClientAddresses(Settings(trusted_proxies="10.0.0.0/8, 2001:db8:ffff::1").trusted_proxy_networks)


def key(peer: str, *forwarded: str, addresses: ClientAddresses = TRUSTED) -> str:
    found = addresses.of(peer, list(forwarded))
    assert found is not None
    return address_key(found)


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_forwards() -> None:
    nobody = ClientAddresses([])
    assert key("198.51.100.7", "203.0.113.9", addresses=nobody) == "198.51.100.7"
    assert key("10.0.0.2", "203.0.113.9", addresses=nobody) == "10.0.0.2"


def test_an_untrusted_peer_is_the_client_even_with_a_forwarded_header() -> None:
    assert key("198.51.100.7", "203.0.113.9") == "198.51.100.7"


def test_forwarded_addresses_are_read_right_to_left_past_the_trusted_hops() -> None:
    # The client sent "1.1.1.1" itself; proxy 10.0.0.5 appended 203.0.113.9, the address it was
    # reached from; proxy 10.0.0.2 appended 10.0.0.5 and connected to chatgate.
    assert key("10.0.0.2", "1.1.1.1, 203.0.113.9, 10.0.0.5") == "203.0.113.9"
    assert key("10.0.0.2", "1.1.1.1", "203.0.113.9, 10.0.0.5") == "203.0.113.9"  # headers in order
    assert key("10.0.0.2", "10.0.0.9, 10.0.0.5") == "10.0.0.9"  # every hop trusted: the first one


def test_a_forwarded_value_that_is_not_an_address_is_not_believed() -> None:
    assert key("10.0.0.2", "not-an-address") == "10.0.0.2"
    assert key("10.0.0.2", "203.0.113.9:4711") == "203.0.113.9"
    assert key("10.0.0.2", "[2001:db8::5]:4711") == "2001:db8::/64"


def test_an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_address_as_itself() -> None:
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:203.0.113.9") == "203.0.113.9"
    assert key("2001:db8:ffff::1", "2001:db8:9:9::42") == "2001:db8:9:9::/64"


def test_addresses_are_compared_as_addresses() -> None:
    found = TRUSTED.of("10.0.0.2", ["203.000.113.009"])  # not a canonical form: refused by the parser
    assert found == ipaddress.ip_address("10.0.0.2")
