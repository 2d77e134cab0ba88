"""Top-up codes are read back forgivingly, carry 100 bits, and their attempts are counted by the
rate limiter's counters."""

import pytest

from chatgate.errors import RateLimited
from chatgate.services import codes
from chatgate.services.ratelimit import LocalRateLimiter
from chatgate.services.redemption import throttle


def test_a_code_reads_back_however_it_is_typed_and_nothing_else_does() -> None:
    code = codes.new_code()
    characters = codes.body(code)
    assert characters is not None and len(characters) == codes.LENGTH and codes.BITS == 100
    typed = code.lower().replace("-", " ")
    assert codes.body(typed) == characters
    assert codes.body(characters) == characters  # without the CG- prefix
    assert codes.body("CG-OIL00-00000-00000-00000") == "01100" + "0" * 15  # O is 0, I and L are 1
    for wrong in ("", "CG-", "CG-0000-0000", "CG-UUUUU-00000-00000-00000", code + "0"):
        assert codes.body(wrong) is None
    assert codes.hint(characters) == "CG-" + characters[:4]
    assert codes.digest(characters) != characters and len(codes.digest(characters)) == 64


def test_codes_do_not_repeat() -> None:
    assert len({codes.new_code() for _ in range(2000)}) == 2000


async def test_the_throttle_counts_per_key_and_refuses_past_the_limit() -> None:
    limiter = LocalRateLimiter()
    for _ in range(3):
        await throttle(limiter, "u1", limit=3, what="attempts")
    with pytest.raises(RateLimited) as refused:
        await throttle(limiter, "u1", limit=3, what="attempts")
    assert refused.value.retry_after >= 1 and "at most 3 in 60 minutes" in refused.value.message
    await throttle(limiter, "u2", limit=3, what="attempts")  # another key counts apart
