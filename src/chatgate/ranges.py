"""The range of every number an operator or a user can set, defined once.

Settings, the command line and the console API all check against these, so a value is accepted or
refused the same way wherever it is given, with the same one-line message. Each upper bound fits
the column that stores the number (32-bit for per-minute limits, 64-bit for credits) and stays a
safe integer in JavaScript (the console), so an accepted value never fails later in a database.
"""

from dataclasses import dataclass

from chatgate.errors import InvalidRequest


@dataclass(frozen=True)
class Range:
    """Whole numbers from ``low`` to ``high``, both included."""

    low: int
    high: int

    def describe(self, value: object) -> str:
        """What is wrong with ``value``, without naming it."""
        shown = f"{value:,}" if isinstance(value, int) else repr(value)
        return f"must be a whole number from {self.low:,} to {self.high:,} (got {shown})."

    def message(self, name: str, value: object) -> str:
        return f"{name} {self.describe(value)}"

    def contains(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def check(self, value: int, param: str, *, name: str | None = None) -> int:
        """``value`` itself, or InvalidRequest naming ``param``."""
        if not self.contains(value):
            raise InvalidRequest(self.message(name or param, value), param=param)
        return value

    def check_optional(self, value: int | None, param: str, *, name: str | None = None) -> int | None:
        return None if value is None else self.check(value, param, name=name)

    def validator(self, name: str) -> "RangeValidator":
        """For a settings field: raises ValueError with the same message."""
        return RangeValidator(self, name)


@dataclass(frozen=True)
class RangeValidator:
    range: Range
    name: str

    def __call__(self, value: int | None) -> int | None:
        if value is not None and not self.range.contains(value):
            raise ValueError(self.range.message(self.name, value))
        return value


MAX_CREDITS = 10**15  # a quadrillion credits: past any real balance, and exact in JavaScript

CREDITS = Range(0, MAX_CREDITS)  # a balance, free credits, a token's cap
GRANT = Range(-MAX_CREDITS, MAX_CREDITS)  # credits added (or, negative, taken away)
RPM = Range(1, 10_000_000)  # requests per minute
TPM = Range(1, 2_000_000_000)  # tokens per minute (a 32-bit column)
CONCURRENCY = Range(1, 100_000)  # requests at once
TOKENS_PER_USER = Range(1, 10_000)  # live API tokens a user may hold
ALLOWED_MODELS = Range(1, 64)  # names in a token's model allow-list
SIGNUPS_PER_HOUR = Range(0, 1_000_000)  # from one client address; 0: no limit
INVITE_USES = Range(1, 1_000_000)  # sign-ups one invite code admits
INVITE_DAYS = Range(1, 3650)  # an invite code's lifetime
LOGIN_FREE_ATTEMPTS = Range(1, 1000)  # sign-in attempts before delays begin
LOGIN_MAX_DELAY = Range(1, 86_400)  # seconds: the longest wait between sign-in attempts
LEASE_SECONDS = Range(3, 3600)  # how long a dead replica's concurrency slots outlive it
HASH_WORKERS = Range(1, 64)  # password hashes at once
HASH_QUEUE = Range(0, 100_000)  # password checks waiting for a hash worker
SESSION_HOURS = Range(1, 24 * 366)
STORAGE_BYTES = Range(1, 10**13)  # a storage quota or cap
ID = Range(1, 2**63 - 1)  # a row id (64-bit)
PAGE_OFFSET = Range(0, 10**9)  # how far into a listing
