"""One-time codes people type or paste (top-up codes today; any code a person redeems once).

A code is ``CG-`` then 20 characters of Crockford's base 32 (digits and capitals without I, L, O,
U), in groups of five: 100 random bits. It is read back forgivingly (any case, with or without the
dashes and spaces, O for 0, I and L for 1) and kept only as the SHA-256 of its characters, like an
API token. With 100 bits, guessing is hopeless: at a million guesses a second, finding any one of a million
live codes takes about 40 billion years on average (2**100 / 10**6 / 10**6 seconds); and guesses
are rate limited to a few an hour.
"""

import secrets

from chatgate.services.auth import hash_secret

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 20
BITS = LENGTH * 5  # 100
PREFIX = "CG"
HINT = 4  # characters kept in the clear to tell codes apart in lists (20 of the 100 bits)
_READ = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_code() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return "-".join([PREFIX, *(body[i : i + 5] for i in range(0, LENGTH, 5))])


def body(code: str) -> str | None:
    """The code's characters as stored, or None if it cannot be a code at all."""
    text = "".join(code.split()).replace("-", "").upper()
    text = text.removeprefix(PREFIX)
    text = text.translate(_READ)
    if len(text) != LENGTH or any(c not in ALPHABET for c in text):
        return None
    return text


def digest(characters: str) -> str:
    """What is stored: the SHA-256 of the code's characters, as for API tokens."""
    return hash_secret(characters)


def hint(characters: str) -> str:
    return f"{PREFIX}-{characters[:HINT]}"
