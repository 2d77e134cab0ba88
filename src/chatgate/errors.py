"""Domain errors. They know nothing of HTTP: the API layer maps them to statuses in one table."""


class ChatgateError(Exception):
    """Base of every error chatgate reports to a caller.

    ``code`` is the machine-readable code sent to the caller; ``param`` names the request field at fault.
    ``headers`` carries what the caller is told beside any answer (its rate-limit state), once known.
    """

    code: str = "api_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = {}
        if code is not None:
            self.code = code


class InvalidRequest(ChatgateError):
    """The request is malformed or a value is out of range."""

    code = "invalid_value"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the server accepts."""

    code = "request_too_large"


class NotImplementedFeature(InvalidRequest):
    """A parameter or feature this deployment cannot honour; never silently ignored."""

    code = "api_not_implemented"


class UnsupportedParameter(InvalidRequest):
    """A parameter this model's deployment does not take (as OpenAI answers for such a parameter)."""

    code = "unsupported_parameter"


class InvalidImage(InvalidRequest):
    """An image part that cannot be used: not an image, corrupt, too large, or at a refused address."""

    code = "invalid_image"


class AuthError(ChatgateError):
    code = "invalid_token"


class TokenMismatch(InvalidRequest):
    """The token may not use this model."""

    code = "token_mismatched"


class Forbidden(ChatgateError):
    code = "forbidden"


class Conflict(ChatgateError):
    code = "conflict"


class Gone(ChatgateError):
    """It existed, and no longer can be used (an expired code)."""

    code = "gone"


class InsufficientQuota(ChatgateError):
    """The balance (or the token's cap) cannot cover the most this request could cost."""

    code = "insufficient_quota"


class RateLimited(ChatgateError):
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers


class Unavailable(ChatgateError):
    """Something chatgate needs to admit a request safely is unreachable or saturated: try again shortly."""

    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StorageFull(ChatgateError):
    """The file store as a whole is full (one owner's uploads never make room by removing another's)."""

    code = "storage_full"


class ModelNotFound(ChatgateError):
    code = "model_not_found"


class NotFound(ChatgateError):
    code = "not_found"


class EngineBusy(ChatgateError):
    """Every engine slot is busy and the wait queue is full."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelUnavailable(ChatgateError):
    """Nothing can serve this now: every deployment of the model is disabled by the operator."""

    code = "model_unavailable"


class EngineFailure(ChatgateError):
    """The engine failed while generating."""

    code = "engine_error"


class UpstreamRefused(ChatgateError):
    """An upstream answered 4xx; its status and message are kept (a 429 stays a 429)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code or "upstream_error")
        self.status = status
        self.retry_after = retry_after


class UpstreamFailed(ChatgateError):
    """An upstream failed (5xx, a broken connection or stream, bad JSON)."""

    code = "upstream_error"


class UpstreamTimeout(ChatgateError):
    code = "upstream_timeout"


class StorageUnavailable(ChatgateError):
    """The database cannot take what a request must record: the request fails rather than go unrecorded."""

    code = "storage_unavailable"


class MailFailed(ChatgateError):
    """The mail server could not be reached or refused the message."""

    code = "mail_failed"


class AssetError(ChatgateError):
    """A model file is missing, incomplete or fails its checksum."""

    code = "model_asset_error"


class ConfigError(ChatgateError):
    """The settings or the model catalogue are invalid."""

    code = "config_error"
