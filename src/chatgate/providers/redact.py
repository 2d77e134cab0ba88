"""Network addresses kept out of what a caller is told.

An error from the guarded fetcher or an upstream can carry the addresses a name resolved to or an
upstream's own network details (``Connect call failed ('10.0.3.7', 8000)``): telling a caller
those maps the operator's network for them. They are replaced by ``<address>``; the host a caller
wrote itself may stay.
"""

import ipaddress
import re

_CANDIDATE = re.compile(r"[0-9A-Fa-f:.]{3,}")


def _address_in(token: str) -> str | None:
    """The address a run of address-like characters starts with (a port or a full stop may follow)."""
    trimmed = token.rstrip(".")
    candidates = [token, trimmed, trimmed.rstrip(":")]
    if trimmed.count(":") == 1 and "." in trimmed:  # 10.0.0.1:8080
        candidates.append(trimmed.split(":", 1)[0])
    for candidate in candidates:
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            continue
        return candidate
    return None


def without_addresses(text: str, *, keep: str = "") -> str:
    """``text`` with every IP address in it replaced, but ``keep`` (the caller's own host)."""
    keep = keep.strip("[]").lower()

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        address = _address_in(token)
        if address is None or (keep and address.lower() == keep):
            return token
        return "<address>" + token[len(address) :]

    return _CANDIDATE.sub(replace, text)
