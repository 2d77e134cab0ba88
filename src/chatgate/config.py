"""Typed settings (environment prefix ``CHATGATE_``) and the model catalogue file."""

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatgate import ranges
from chatgate.errors import ConfigError
from chatgate.ranges import Range

DEFAULT_CATALOGUE = Path(__file__).parent / "catalogue" / "default.yaml"
# A request's text (messages, tools, schemas) at most, for the default body limit: a million
# tokens of text, the longest context any catalogue model offers, is about 4 MB.
TEXT_BYTES = 4 * 2**20
# Request fields beyond OpenAI's chat API that OpenAI-compatible servers take (vLLM, llama.cpp's
# server, SGLang): forwarded to a deployment only if its ``extra_fields`` lists them.
EXTENSION_FIELDS = ("top_k", "min_p", "repetition_penalty", "chat_template_kwargs")
# OpenAI's fields that change the bill (a priority tier, predicted output, web searches, audio
# priced apart from text) or where the data is kept (stored completions and their metadata):
# forwarded only where the catalogue enables them, in ``extra_fields`` too.
GATED_FIELDS = ("service_tier", "store", "metadata", "prediction", "web_search_options", "audio")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ranged(limits: Range, name: str) -> AfterValidator:
    """A settings field checked against one of the shared ranges (see chatgate.ranges)."""
    return AfterValidator(limits.validator("CHATGATE_" + name.upper()))


def _networks(text: str) -> list[IPNetwork]:
    """Comma-separated addresses or CIDR blocks (``10.0.0.0/8, 192.168.1.7``)."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def _check_networks(text: str) -> str:
    try:
        _networks(text)
    except ValueError as exc:
        raise ValueError(f"CHATGATE_TRUSTED_PROXIES holds something that is not an address: {exc}") from exc
    return text


class Settings(BaseSettings):
    """Everything chatgate reads from its environment, validated at start-up."""

    model_config = SettingsConfigDict(env_prefix="CHATGATE_", extra="ignore")

    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    catalogue: Path = DEFAULT_CATALOGUE
    data_dir: Path = Path(".chatgate")
    model_dir: Path | None = None
    engine_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_queue: int = Field(default=16, ge=0)
    # Server processes on one port (`chatgate serve --workers N`); None: 1 in development, one per
    # CPU in production (see `worker_count`).
    workers: int | None = Field(default=None, ge=1, le=256)
    # On SIGTERM a process stops accepting, then waits at most this long for requests in flight
    # (streams included) to finish before it cancels them, settles them and exits.
    drain_seconds: float = Field(default=30.0, ge=0)
    # How long an idle keep-alive connection stays open. Above the clients' own idle limits (the
    # OpenAI and Anthropic SDKs drop theirs after 5 s, aiohttp after 15): a server that closes first
    # races the client's next request on that connection, which then fails without an answer.
    keep_alive_seconds: int = Field(default=20, ge=1, le=3600)
    # Set by `chatgate serve` for its workers when there is more than one: the Unix socket of the
    # engine process that serves the catalogue's local models to all of them (never set by hand).
    engine_socket: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    database_url: str | None = None  # default: SQLite in the data dir
    redis_url: str | None = None  # shared rate limits across replicas
    free_credits: Annotated[int, _ranged(ranges.CREDITS, "free_credits")] = 1_000_000  # a new user's balance
    # Sign-up: open to anyone, by invite code only, or closed (accounts made by the operator).
    # Unset: open in development, invite in production.
    signup: Literal["open", "invite", "closed"] | None = None
    signups_per_hour: Annotated[int, _ranged(ranges.SIGNUPS_PER_HOUR, "signups_per_hour")] = 5  # per address
    # Proxies whose X-Forwarded-For is believed (addresses or CIDR blocks, comma-separated).
    trusted_proxies: Annotated[str, AfterValidator(_check_networks)] = ""
    # Per user, across all of the user's tokens and the console (a user's own setting wins).
    default_rpm: Annotated[int | None, _ranged(ranges.RPM, "default_rpm")] = 600
    default_tpm: Annotated[int | None, _ranged(ranges.TPM, "default_tpm")] = 1_000_000
    default_concurrency: Annotated[int | None, _ranged(ranges.CONCURRENCY, "default_concurrency")] = 16
    tokens_per_user: Annotated[int, _ranged(ranges.TOKENS_PER_USER, "tokens_per_user")] = 20  # live ones
    # When Redis is unreachable: refuse (503) rather than let every request through unlimited.
    # Unset: refuse in production, let through in development.
    limits_fail_closed: bool | None = None
    # A replica's hold on a user's concurrency slot, renewed while the request runs: how long the
    # slots of a replica that died stay taken.
    limits_lease_seconds: Annotated[int, _ranged(ranges.LEASE_SECONDS, "limits_lease_seconds")] = 30
    # Sign-in: attempts (per account, and per client address) before growing delays begin.
    login_free_attempts: Annotated[int, _ranged(ranges.LOGIN_FREE_ATTEMPTS, "login_free_attempts")] = 5
    login_address_free_attempts: Annotated[
        int, _ranged(ranges.LOGIN_FREE_ATTEMPTS, "login_address_free_attempts")
    ] = 20
    login_max_delay: Annotated[int, _ranged(ranges.LOGIN_MAX_DELAY, "login_max_delay")] = 300  # seconds
    # Password hashing (argon2, CPU- and memory-heavy): at most this many at once, this many waiting.
    password_hash_workers: Annotated[int, _ranged(ranges.HASH_WORKERS, "password_hash_workers")] = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 1) // 2)
    )
    password_hash_queue: Annotated[int, _ranged(ranges.HASH_QUEUE, "password_hash_queue")] = 32
    usage_flush_seconds: float = Field(default=1.0, gt=0, le=3600)
    # How often each replica writes its deployment figures and reads which deployments are disabled.
    deployment_sync_seconds: float = Field(default=2.0, gt=0, le=60)
    session_hours: Annotated[int, _ranged(ranges.SESSION_HOURS, "session_hours")] = 24 * 7
    secure_cookies: bool | None = None  # unset: on in production (serve it over https)
    public_url: str | None = None  # how clients reach this server, for file links (default: host and port)
    # A request body at most; default: what the largest request the image limits allow needs (body_limit).
    max_body_bytes: int | None = Field(default=None, ge=1024)
    image_analysis: bool = True  # describe images in text for models that cannot see them
    image_max_bytes: int = Field(default=20_000_000, ge=1)  # one image
    image_max_pixels: int = Field(default=40_000_000, ge=1)  # one image, as its header declares it
    image_request_bytes: int = Field(default=20_000_000, ge=1)  # all the images of one request
    image_request_pixels: int = Field(default=50_000_000, ge=1)
    # Heavy work (images, grammars, PDFs) at once on this host, across all its chatgate processes.
    heavy_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # How long a process's hold on its reservations lasts without renewal (renewed every third).
    lease_seconds: float = Field(default=30.0, ge=3)
    files_dir: Path | None = None  # generated images (default: the data dir's files/)
    file_max_bytes: int = Field(default=25_000_000, ge=1)
    files_max_total_bytes: Annotated[int, _ranged(ranges.STORAGE_BYTES, "files_max_total_bytes")] = (
        2_000_000_000
    )
    # What one user's uploads may hold; a new upload replaces that user's oldest ones to fit.
    files_user_quota_bytes: Annotated[int, _ranged(ranges.STORAGE_BYTES, "files_user_quota_bytes")] = (
        100_000_000
    )
    file_retention_hours: int = Field(default=24 * 7, ge=1)
    # Responses API answers kept with store (the default), for reading back and previous_response_id.
    responses_retention_hours: int = Field(default=24 * 30, ge=1)
    # Browsing: hosts the fetcher may reach even on private or loopback addresses (comma-separated).
    browsing_allow_hosts: str = ""
    browsing_index: Path | None = None  # the local search index; default: index.db in the data dir
    browsing_searxng_url: str | None = Field(default=None, pattern=r"^https?://")  # for OpenAI's catalogue

    # Redemption attempts (top-up codes) per hour, per user and per client address.
    redeem_per_user_hour: int = Field(default=10, ge=1, le=10_000)
    redeem_per_address_hour: int = Field(default=30, ge=1, le=100_000)
    # Email: verification links at sign-up (when on) and password-reset links, over SMTP.
    email_verification: bool = False  # new accounts verify their address before they sign in
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = Field(default=None, max_length=320)  # e.g. "chatgate <noreply@example.com>"
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> "Settings":
        if self.env == "production":
            if self.api_key is None or len(self.api_key.get_secret_value()) < 16:
                raise ValueError("CHATGATE_API_KEY of at least 16 characters is required in production")
            if self.smtp_host and self.smtp_security == "none" and self.smtp_host not in LOOPBACK:
                raise ValueError(
                    "CHATGATE_SMTP_SECURITY=none sends passwords and links in the clear: in production it is "
                    "allowed only to a relay on this machine (CHATGATE_SMTP_HOST=127.0.0.1)"
                )
        if self.smtp_host and not self.smtp_from:
            raise ValueError("CHATGATE_SMTP_FROM (the sender's address) is required with CHATGATE_SMTP_HOST")
        if self.email_verification and not self.smtp_host:
            raise ValueError(
                "CHATGATE_EMAIL_VERIFICATION needs CHATGATE_SMTP_HOST (and _FROM) to send the links"
            )
        return self

    @property
    def worker_count(self) -> int:
        """How many server processes to run: as set, else 1 in development and one per CPU in production."""
        if self.workers is not None:
            return self.workers
        return 1 if self.env == "development" else max(1, os.cpu_count() or 1)

    @property
    def limits_path(self) -> Path:
        """The rate-limit counters that the workers of one host share when there is no Redis."""
        return self.data_dir / "limits.db"

    @property
    def signup_mode(self) -> Literal["open", "invite", "closed"]:
        if self.signup is not None:
            return self.signup
        return "invite" if self.env == "production" else "open"

    @property
    def fail_closed(self) -> bool:
        return self.limits_fail_closed if self.limits_fail_closed is not None else self.env == "production"

    @property
    def cookies_secure(self) -> bool:
        return self.secure_cookies if self.secure_cookies is not None else self.env == "production"

    @property
    def trusted_proxy_networks(self) -> list[IPNetwork]:
        return _networks(self.trusted_proxies)

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'chatgate.db').resolve()}"

    @property
    def body_limit(self) -> int:
        """The largest request body accepted: ``max_body_bytes`` if set, else what the largest request
        the limits allow needs: all its images inlined as base64 data URLs (4 bytes for every 3 of
        ``image_request_bytes``), and its text (TEXT_BYTES). 31 MB with the default limits."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return -(-self.image_request_bytes // 3) * 4 + TEXT_BYTES

    @property
    def allowed_hosts(self) -> list[str]:
        return [host.strip() for host in self.browsing_allow_hosts.split(",") if host.strip()]

    @property
    def index_path(self) -> Path:
        return self.browsing_index if self.browsing_index is not None else self.data_dir / "index.db"

    @property
    def models_path(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"

    @property
    def files_path(self) -> Path:
        return self.files_dir if self.files_dir is not None else self.data_dir / "files"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def load_settings(**overrides: object) -> Settings:
    """The settings, or a ConfigError saying in one line which variable is wrong and why."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        name = f"CHATGATE_{str(error['loc'][0]).upper()}" if error["loc"] else ""
        if name and not message.startswith(name):
            message = f"{name}: {message}"
        raise ConfigError(message) from None


# A deployment's id: what its state (disabled or not) and its statistics are kept under in the database.
DeploymentId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$")]


class LocalDeployment(BaseModel):
    """A model served by the embedded llama.cpp engine."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local"] = "local"
    id: DeploymentId | None = None  # stable across catalogue edits; derived when absent (deployment_ids)
    asset: str | None = None
    path: Path | None = None
    context_length: int = Field(default=4096, ge=128)
    instances: int = Field(default=4, ge=1, le=16)  # sequences at once (a KV stream each, one context)
    weight: int = Field(default=1, ge=0)
    vision: bool = False  # refused for now: the local engine has no image path (see _no_vision)

    @model_validator(mode="after")
    def _one_source(self) -> "LocalDeployment":
        if (self.asset is None) == (self.path is None):
            raise ValueError("a local deployment names exactly one of 'asset' or 'path'")
        return self

    @model_validator(mode="after")
    def _no_vision(self) -> "LocalDeployment":
        if self.vision:
            raise ValueError(
                "the local engine does not read images yet: serve a multimodal GGUF with llama.cpp's "
                "server (--mmproj) and add it as an openai_compatible deployment with 'vision: true'"
            )
        return self


class Price(BaseModel):
    """Credits per million tokens. Nothing is free unless the catalogue says 0."""

    model_config = ConfigDict(extra="forbid")

    prompt: int = Field(default=1_000_000, ge=0)
    completion: int = Field(default=1_000_000, ge=0)


# The headers that say where a request's body ends and what becomes of its connection: the HTTP
# client writes them for each request, so a deployment's ``headers`` may not set them.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"})


def header_fault(name: str, value: str) -> str | None:
    """Why a header cannot be sent with a request as given (a framing header, or a name or value
    that would break the request's lines), or None: the rule of the catalogue and of the relay's client."""
    if name.lower() in FRAMING_HEADERS:
        return f"may not set {name!r}: the client writes it for each request"
    if not name or any(c in name for c in ": \r\n\0") or any(c in value for c in "\r\n\0"):
        return f"{name!r} is not a header that can be sent"
    return None


class UpstreamDeployment(BaseModel):
    """A model served by an OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's server...)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai_compatible"]
    id: DeploymentId | None = None  # stable across catalogue edits; derived when absent (deployment_ids)
    base_url: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1)  # the upstream's name for it
    api_key_env: str | None = None  # the environment variable holding the upstream key
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=120.0, gt=0)  # seconds to the first byte, and between bytes after
    max_tokens: int = Field(default=4096, ge=1)  # assumed when a request sets none, for reserving credits
    # The field the upstream reads its output limit from: most OpenAI-compatible servers (vLLM,
    # Ollama, llama.cpp's) read max_tokens; OpenAI's reasoning models take only max_completion_tokens.
    limit_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    weight: int = Field(default=1, ge=0)  # share of traffic among a model's deployments
    max_concurrency: int | None = Field(default=None, ge=1)
    vision: bool = False  # the upstream model reads images itself (gpt-4o, a vLLM or Ollama VLM)
    # Request fields forwarded beyond OpenAI's usual ones: EXTENSION_FIELDS the server takes, and the
    # GATED_FIELDS this deployment may be sent (they change the bill or where the data is kept).
    extra_fields: list[str] = Field(default_factory=list)
    # The upstream serves OpenAI's Responses API (POST /responses) too: Responses requests are
    # relayed to it as they came, instead of translated to Chat Completions.
    responses_api: bool = False

    @model_validator(mode="after")
    def _known_fields(self) -> "UpstreamDeployment":
        known = (*EXTENSION_FIELDS, *GATED_FIELDS)
        unknown = [field for field in self.extra_fields if field not in known]
        if unknown:
            raise ValueError(f"extra_fields may name {', '.join(known)}; not {', '.join(unknown)}")
        for name, value in self.headers.items():
            if fault := header_fault(name, value):
                raise ValueError(f"headers {fault}")
        return self

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class SketchBackend(BaseModel):
    """Offline drawing: a catalogue model writes SVG shapes (held valid by a schema), rendered to PNG."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["sketch"]
    model: str | None = None  # the catalogue model that draws (default: the deployment's base)
    max_shapes: int = Field(default=10, ge=1, le=40)


class ImagesAPIBackend(BaseModel):
    """An OpenAI-compatible images API: /images/generations, and /images/edits for input images."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["openai_images"]
    base_url: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1)  # e.g. gpt-image-1
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=180.0, gt=0)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ImageGenerationDeployment(BaseModel):
    """A chat model that draws: its base model writes the image prompt, the backend makes the image."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["image_generation"]
    base: str = Field(min_length=1)  # the catalogue model that turns the conversation into a prompt
    backend: Annotated[SketchBackend | ImagesAPIBackend, Field(discriminator="backend")]
    sizes: list[Annotated[str, Field(pattern=r"^[1-9][0-9]{1,3}x[1-9][0-9]{1,3}$")]] = Field(
        default_factory=lambda: ["1024x1024", "1024x1536", "1536x1024"], min_length=1
    )
    image_price: int = Field(default=40_000, ge=0)  # credits per image, on top of the tokens


class LocalIndexSearch(BaseModel):
    """The offline full-text index filled by ``chatgate index add``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local_index"]
    path: Path | None = None  # default: the server's index (CHATGATE_BROWSING_INDEX)


class SearxngSearch(BaseModel):
    """A SearxNG instance's JSON API (``format=json`` must be enabled in its settings)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["searxng"]
    base_url: str = Field(pattern=r"^https?://")
    categories: str | None = None  # e.g. "general"
    language: str | None = None  # e.g. "en"
    timeout: float = Field(default=8.0, gt=0)


class BraveSearch(BaseModel):
    """Brave's Web Search API, keyed."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["brave"]
    api_key_env: str = "BRAVE_SEARCH_API_KEY"
    base_url: str = Field(default="https://api.search.brave.com/res/v1/web/search", pattern=r"^https?://")
    timeout: float = Field(default=8.0, gt=0)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env)


SearchConfig = Annotated[LocalIndexSearch | SearxngSearch | BraveSearch, Field(discriminator="backend")]


class BrowsingDeployment(BaseModel):
    """Another catalogue model that searches, reads what it finds and answers with cited sources."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["browsing"]
    base: str = Field(min_length=1)  # the public name (or alias) of the model that writes
    search: SearchConfig
    max_results: int = Field(default=5, ge=1, le=20)  # search results taken per query
    max_pages: int = Field(default=3, ge=0, le=10)  # pages fetched and read
    passage_tokens: int = Field(default=1000, ge=50)  # the sources' share of the answer prompt
    max_tokens: int = Field(default=512, ge=1)  # the answer's length when a request sets none
    query_tokens: int = Field(default=32, ge=4, le=256)  # for writing the search query
    fetch_timeout: float = Field(default=8.0, gt=0)  # seconds per page, and for all reading together
    fetch_max_bytes: int = Field(default=2_000_000, ge=1024)


class LocalEmbeddingDeployment(BaseModel):
    """An embedding model run in-process by ONNX Runtime (see docs/embeddings.md).

    ``asset`` names a model installed as a package and converted at set-up (``chatgate models``);
    ``path`` a directory holding ``model.onnx`` and ``tokenizer.json`` (an ONNX export of a BERT-style
    encoder, as many model repositories publish), with its pooling given here.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local_embedding"]
    asset: str | None = None
    path: Path | None = None
    pooling: Literal["mean", "cls"] = "mean"  # for a ``path`` model; an asset knows its own
    normalize: bool = True  # scale each vector to length 1 (cosine similarity = dot product)
    max_input_tokens: int | None = Field(default=None, ge=1)  # default: what the model's positions allow
    matryoshka: bool = False  # trained so that its vectors' leading parts are embeddings too: 'dimensions'
    workers: int = Field(default=2, ge=1, le=64)  # batches run at once, one thread each
    max_queue: int = Field(default=16, ge=0)  # requests waiting for a worker before a 429
    weight: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> "LocalEmbeddingDeployment":
        if (self.asset is None) == (self.path is None):
            raise ValueError("a local embedding deployment names exactly one of 'asset' or 'path'")
        return self


class UpstreamEmbeddingDeployment(BaseModel):
    """An embedding model served by an OpenAI-compatible ``/embeddings`` endpoint (OpenAI, vLLM,
    Ollama, llama.cpp's server with ``--embedding``...)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai_embeddings"]
    base_url: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1)  # the upstream's name for it
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=120.0, gt=0)
    weight: int = Field(default=1, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    dimensions: int | None = Field(default=None, ge=1)  # its vectors' length, when known
    max_input_tokens: int = Field(default=8192, ge=1)  # per input, as the upstream counts them
    matryoshka: bool = False  # the model takes 'dimensions' (OpenAI's text-embedding-3-*, nomic v1.5...)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


EmbeddingDeployment = LocalEmbeddingDeployment | UpstreamEmbeddingDeployment


def _deployment_kind(value: object) -> str:
    kind = value.get("kind", "local") if isinstance(value, dict) else getattr(value, "kind", "local")
    return str(kind)


# `kind` may be left out for the local engine, the default.
Deployment = Annotated[
    Annotated[LocalDeployment, Tag("local")]
    | Annotated[UpstreamDeployment, Tag("openai_compatible")]
    | Annotated[ImageGenerationDeployment, Tag("image_generation")]
    | Annotated[BrowsingDeployment, Tag("browsing")]
    | Annotated[LocalEmbeddingDeployment, Tag("local_embedding")]
    | Annotated[UpstreamEmbeddingDeployment, Tag("openai_embeddings")],
    Discriminator(_deployment_kind),
]


class CatalogueEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    owned_by: str = "chatgate"
    price: Price = Field(default_factory=Price)
    deployment: Deployment | None = None
    deployments: list[Deployment] = Field(default_factory=list)
    retries: int = Field(default=2, ge=0, le=10)  # extra attempts before the first byte, across deployments

    @model_validator(mode="after")
    def _some_deployment(self) -> "CatalogueEntry":
        if (self.deployment is None) == (not self.deployments):
            raise ValueError(f"model {self.name!r} names either one 'deployment' or a list of 'deployments'")
        if self.derived is not None and self.deployment is None:
            raise ValueError(f"model {self.name!r}, built on another, has exactly one 'deployment'")
        embedding = [isinstance(d, EmbeddingDeployment) for d in self.all_deployments]
        if any(embedding) and not all(embedding):
            raise ValueError(f"model {self.name!r} mixes embedding deployments with chat deployments")
        return self

    @property
    def all_deployments(
        self,
    ) -> list[
        LocalDeployment
        | UpstreamDeployment
        | ImageGenerationDeployment
        | BrowsingDeployment
        | LocalEmbeddingDeployment
        | UpstreamEmbeddingDeployment
    ]:
        return [self.deployment] if self.deployment is not None else list(self.deployments)

    @property
    def embeddings(self) -> list[EmbeddingDeployment]:
        """The deployments of an embedding model (empty for a chat model)."""
        return [d for d in self.all_deployments if isinstance(d, EmbeddingDeployment)]

    @property
    def derived(self) -> ImageGenerationDeployment | BrowsingDeployment | None:
        """The deployment built on another catalogue model (its ``base``), if this entry is one."""
        found = [
            d for d in self.all_deployments if isinstance(d, ImageGenerationDeployment | BrowsingDeployment)
        ]
        return found[0] if found else None


class HealthPolicy(BaseModel):
    """Taking failing deployments out of service by themselves, and back in (off unless set)."""

    model_config = ConfigDict(extra="forbid")

    # Disable a deployment after this many failed requests in a row (as one replica sees them).
    auto_disable_after: int | None = Field(default=None, ge=1, le=1000)
    # How often a deployment disabled that way is sent a small request; it is enabled again once it answers.
    probe_seconds: float = Field(default=60.0, ge=1, le=86_400)


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[CatalogueEntry] = Field(min_length=1)
    health: HealthPolicy = Field(default_factory=HealthPolicy)

    @model_validator(mode="after")
    def _unique_names(self) -> "Catalogue":
        seen: set[str] = set()
        for entry in self.models:
            for name in (entry.name, *entry.aliases):
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} appears twice")
                seen.add(name)
        for entry in self.models:
            derived = entry.derived
            if derived is None:
                continue
            base = self.entry(derived.base)
            if base is None:
                raise ValueError(
                    f"model {entry.name!r} is built on {derived.base!r}, which is not in the catalogue"
                )
            if base.derived is not None:
                raise ValueError(
                    f"model {entry.name!r} is built on {derived.base!r}, itself built on another"
                )
            if base.embeddings:
                raise ValueError(
                    f"model {entry.name!r} is built on {derived.base!r}, an embedding model, not a chat model"
                )
        ids: set[str] = set()
        for entry in self.models:
            for deployment_id in deployment_ids(entry):
                if deployment_id in ids:
                    raise ValueError(f"deployment id {deployment_id!r} appears twice")
                ids.add(deployment_id)
        return self

    def names(self) -> frozenset[str]:
        """Every model's name and aliases."""
        return frozenset(name for entry in self.models for name in (entry.name, *entry.aliases))

    def entry(self, name: str) -> "CatalogueEntry | None":
        """The entry called ``name`` (or with that alias)."""
        return next((e for e in self.models if name == e.name or name in e.aliases), None)


def deployment_ids(entry: CatalogueEntry) -> list[str]:
    """The ids of an entry's local and upstream deployments, in order: each its own ``id``, or one
    derived from the model's name and what the deployment reaches (the upstream's URL and model, or
    the weights), so that weights, timeouts and order can change without losing its state."""
    ids: list[str] = []
    for deployment in entry.all_deployments:
        if isinstance(deployment, LocalDeployment):
            identity = f"local|{deployment.asset or deployment.path}"
        elif isinstance(deployment, UpstreamDeployment):
            identity = f"upstream|{deployment.base_url.rstrip('/')}|{deployment.model}"
        else:
            continue
        if deployment.id is not None:
            ids.append(deployment.id)
            continue
        derived = f"{entry.name}/{hashlib.sha256(identity.encode()).hexdigest()[:8]}"
        candidate, n = derived, 1
        while candidate in ids:  # the same upstream listed twice under one model
            n += 1
            candidate = f"{derived}-{n}"
        ids.append(candidate)
    return ids


def load_catalogue(path: Path) -> Catalogue:
    """Read and validate a catalogue file; every problem is a ConfigError naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read model catalogue {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"model catalogue {path} is not valid YAML: {exc}") from exc
    try:
        return Catalogue.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"model catalogue {path} is invalid: {exc}") from exc


# OpenAI's chat models and list prices (USD per million tokens, prompt and completion). With the
# convention 1 credit = $0.000001, a price in credits per million tokens is the USD price x 1e6.
OPENAI_MODELS: dict[str, tuple[float, float, list[str]]] = {
    "gpt-4o": (2.50, 10.00, ["gpt-4", "gpt-4-vision-preview"]),
    "gpt-4o-mini": (0.15, 0.60, ["gpt-3.5-turbo"]),
    "gpt-4.1": (2.00, 8.00, []),
    "gpt-4.1-mini": (0.40, 1.60, []),
    "gpt-4.1-nano": (0.10, 0.40, []),
}


# OpenAI's embedding models: list price (USD per million input tokens), vector length, and whether
# 'dimensions' may shorten it (the text-embedding-3 models are trained for it).
OPENAI_EMBEDDINGS: dict[str, tuple[float, int, bool]] = {
    "text-embedding-3-small": (0.02, 1536, True),
    "text-embedding-3-large": (0.13, 3072, True),
    "text-embedding-ada-002": (0.10, 1536, False),
}


# Browsing variants of OpenAI's models, offered when a search backend is configured.
OPENAI_BROWSING: dict[str, tuple[str, list[str]]] = {
    "gpt-4o-browsing": ("gpt-4o", ["gpt-4-browsing"]),
    "gpt-4o-mini-browsing": ("gpt-4o-mini", ["gpt-3.5-browsing"]),
}


def openai_catalogue(
    base_url: str, search: LocalIndexSearch | SearxngSearch | BraveSearch | None = None
) -> Catalogue:
    """OpenAI's chat models, its drawing model and its embedding models; with a search backend, also
    the browsing variants."""
    models = [
        CatalogueEntry(
            name=name,
            aliases=aliases,
            owned_by="openai",
            price=Price(prompt=int(prompt * 1_000_000), completion=int(completion * 1_000_000)),
            deployment=UpstreamDeployment(
                kind="openai_compatible",
                base_url=base_url,
                model=name,
                api_key_env="OPENAI_API_KEY",
                limit_field="max_completion_tokens",
                vision=True,  # every model listed reads images
                responses_api=True,
            ),
        )
        for name, (prompt, completion, aliases) in OPENAI_MODELS.items()
    ]
    # The drawing model: gpt-4o writes the prompt, gpt-image-1 draws (list price of a medium square).
    images = ImagesAPIBackend(
        backend="openai_images", base_url=base_url, model="gpt-image-1", api_key_env="OPENAI_API_KEY"
    )
    models.append(
        CatalogueEntry(
            name="gpt-4o-image",
            owned_by="openai",
            price=models[0].price,
            deployment=ImageGenerationDeployment(
                kind="image_generation", base="gpt-4o", backend=images, image_price=42_000
            ),
        )
    )
    models += [
        CatalogueEntry(
            name=name,
            owned_by="openai",
            price=Price(prompt=int(price * 1_000_000), completion=0),
            deployment=UpstreamEmbeddingDeployment(
                kind="openai_embeddings",
                base_url=base_url,
                model=name,
                api_key_env="OPENAI_API_KEY",
                dimensions=dimensions,
                matryoshka=matryoshka,
            ),
        )
        for name, (price, dimensions, matryoshka) in OPENAI_EMBEDDINGS.items()
    ]
    if search is not None:
        prices = {entry.name: entry.price for entry in models}
        models += [
            CatalogueEntry(
                name=name,
                aliases=aliases,
                owned_by="openai",
                price=prices[base],
                deployment=BrowsingDeployment(kind="browsing", base=base, search=search),
            )
            for name, (base, aliases) in OPENAI_BROWSING.items()
        ]
    return Catalogue(models=models)


def effective_catalogue(settings: Settings) -> Catalogue:
    """The catalogue file; with none given and OPENAI_API_KEY set, OpenAI's chat models instead.

    OpenAI's browsing models come with them when there is something to search: a SearxNG instance
    (CHATGATE_BROWSING_SEARXNG_URL), or else a local index that exists.
    """
    if settings.catalogue == DEFAULT_CATALOGUE and os.environ.get("OPENAI_API_KEY"):
        search: SearxngSearch | LocalIndexSearch | None = None
        if settings.browsing_searxng_url:
            search = SearxngSearch(backend="searxng", base_url=settings.browsing_searxng_url)
        elif settings.index_path.is_file():
            search = LocalIndexSearch(backend="local_index")
        return openai_catalogue(os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"), search)
    return load_catalogue(settings.catalogue)
