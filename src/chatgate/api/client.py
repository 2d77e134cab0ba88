"""Who is at the other end: the client address that per-address limits count against.

The address is the socket's peer, unless the peer is one of ``CHATGATE_TRUSTED_PROXIES``. Then
``X-Forwarded-For`` is read from the right: each trusted proxy appends the address it was reached
from, so the first address from the right that is not a trusted proxy is the client (anything
further left was written by the client itself, and is not believed). An IPv6 client counts by its
/64, the block one subscriber is usually given; an IPv4-mapped IPv6 address is its IPv4 address.
"""

import ipaddress
from collections.abc import Sequence

from starlette.requests import Request

from chatgate.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_key(address: IPAddress) -> str:
    """What limits count against: the address itself, or an IPv6 address's /64."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ClientAddresses:
    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self._trusted = tuple(trusted)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

    def of(self, peer: str | None, forwarded: Sequence[str]) -> IPAddress | None:
        """The client of a connection from ``peer`` carrying these ``X-Forwarded-For`` headers."""
        current = _parse(peer) if peer else None
        if current is None or not self._trusted:
            return current
        hops = [hop for header in forwarded for hop in header.split(",")]
        for hop in reversed(hops):
            if not self._is_trusted(current):
                break
            parsed = _parse(hop)
            if parsed is None:  # not an address: whoever wrote it is not to be believed
                break
            current = parsed
        return current

    def key(self, request: Request) -> str:
        """The key per-address limits use for this request's client."""
        peer = request.client.host if request.client is not None else None
        address = self.of(peer, request.headers.getlist("x-forwarded-for"))
        return address_key(address) if address is not None else "unknown"
