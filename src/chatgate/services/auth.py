"""Who may call the API: the operator's master key (accounts and per-user tokens come later)."""

import hmac

from chatgate.errors import AuthError


class AuthService:
    def __init__(self, master_key: str) -> None:
        self._master = master_key.encode()

    def authenticate(self, authorization: str | None) -> str:
        """Check an ``Authorization`` header; return the caller's identity or raise AuthError."""
        if not authorization:
            raise AuthError(
                "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'."
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("The Authorization header must be 'Bearer YOUR_KEY'.")
        if not hmac.compare_digest(token.encode(), self._master):
            raise AuthError("Incorrect API key provided.")
        return "master"
