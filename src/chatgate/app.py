"""create_app(settings): builds storage, the catalogue's providers and the services, and wires the HTTP edge."""

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Container
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatgate import heap
from chatgate.api import (
    accounts,
    billing,
    chat,
    embeddings,
    files,
    health,
    images,
    messages,
    models,
    responses,
    usage,
    verification,
)
from chatgate.api.client import ClientAddresses
from chatgate.api.errors import BodyLimit, CatchAll, on_chatgate_error, on_http_error, on_validation_error
from chatgate.api.hot import Gateway
from chatgate.api.openapi import API_PREFIXES, operation_id
from chatgate.api.trace import TraceMiddleware
from chatgate.config import (
    BrowsingDeployment,
    Catalogue,
    CatalogueEntry,
    HealthPolicy,
    ImageGenerationDeployment,
    LocalDeployment,
    LocalEmbeddingDeployment,
    Settings,
    UpstreamDeployment,
    UpstreamEmbeddingDeployment,
    deployment_ids,
    effective_catalogue,
)
from chatgate.console import admin as console_admin
from chatgate.console import api as console_api
from chatgate.console import business as console_business
from chatgate.console import pages, reference
from chatgate.errors import ChatgateError, ConfigError
from chatgate.providers.base import AnyProvider
from chatgate.providers.browsing import search
from chatgate.providers.browsing.provider import BrowsingProvider
from chatgate.providers.embeddings.base import Embedder
from chatgate.providers.embeddings.router import Choice, EmbeddingRouter
from chatgate.providers.embeddings.upstream import UpstreamEmbedder
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.images import backends
from chatgate.providers.images.analysis import ImageAnalyser
from chatgate.providers.images.drawing import ImageGenerationProvider
from chatgate.providers.images.prepare import ImagePreparer
from chatgate.providers.images.source import ImageLimits, ImageSource
from chatgate.providers.local import assets
from chatgate.providers.mail import SmtpConfig, SmtpMailer
from chatgate.providers.relay import RelaySession
from chatgate.providers.router import Deployment, RouterProvider
from chatgate.providers.shared_engine.client import EngineLink, SharedEngineProvider, deployment_key
from chatgate.providers.shared_engine.embeddings import SharedEmbedder, embedding_key
from chatgate.providers.shared_engine.host import EngineHost
from chatgate.providers.upstream import UpstreamProvider
from chatgate.providers.web.fetch import GuardedFetcher
from chatgate.services.accounts import AccountRules, AccountService
from chatgate.services.audit import AuditLog
from chatgate.services.auth import AuthService, UserLimits
from chatgate.services.catalogue import EmbeddingRoute, ModelRegistry, Route
from chatgate.services.chat import ChatService
from chatgate.services.deployments import DeploymentMonitor
from chatgate.services.emails import AccountMail
from chatgate.services.embeddings import EmbeddingService
from chatgate.services.files import FileService
from chatgate.services.groups import GroupService
from chatgate.services.host_limits import HostRateLimiter
from chatgate.services.images import ImageService
from chatgate.services.invites import InviteService
from chatgate.services.messages import MessagesService
from chatgate.services.metering import Metering
from chatgate.services.passwords import PasswordHashing
from chatgate.services.ratelimit import LocalRateLimiter, RateLimiter
from chatgate.services.ratelimit_redis import RedisRateLimiter
from chatgate.services.recovery import Recovery, new_owner
from chatgate.services.redemption import RedemptionService
from chatgate.services.requestlog import RequestLog
from chatgate.services.responses import ResponsesService
from chatgate.services.stored_responses import ResponseStore
from chatgate.services.tokens import TokenService
from chatgate.services.usage import POSTGRES_BATCH_ROWS, UsageRecorder
from chatgate.storage.counters import CounterStore
from chatgate.storage.database import Database
from chatgate.storage.files import FileStore
from chatgate.storage.money import DatabaseMoney

if TYPE_CHECKING:
    from chatgate.providers.embeddings.local import LocalEmbedder
    from chatgate.providers.local.pool import ThreadBudget

log = logging.getLogger("chatgate")
SETTLE_SECONDS = 10.0  # at shutdown, after the drain: how long cancelled requests get to settle

Progress = assets.Progress


def master_key(settings: Settings) -> str:
    """The operator's master key: from the settings, or (in development only) one kept in the data dir."""
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    path = settings.data_dir / "master_key"
    if path.is_file():
        return path.read_text().strip()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = "sk-dev-" + secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


@dataclass
class Outside:
    """What reaches beyond chatgate, built once and shared: the upstream client, the guarded fetcher,
    the file store, image input handling, and the host's bound on heavy work."""

    http: httpx.AsyncClient  # search services and images APIs
    relay: RelaySession  # chat completions to upstreams: the hot path
    fetcher: GuardedFetcher
    files: FileStore
    images: ImagePreparer
    heavy: HeavyWork


def build_outside(settings: Settings) -> Outside:
    fetcher = GuardedFetcher(allow_hosts=settings.allowed_hosts)
    files = FileStore(
        settings.files_path,
        public_url=settings.base_url,
        max_file_bytes=settings.file_max_bytes,
        max_total_bytes=settings.files_max_total_bytes,
        owner_quota_bytes=settings.files_user_quota_bytes,
        retention_seconds=settings.file_retention_hours * 3600,
    )
    limits = ImageLimits(
        max_bytes=settings.image_max_bytes,
        max_pixels=settings.image_max_pixels,
        request_bytes=settings.image_request_bytes,
        request_pixels=settings.image_request_pixels,
    )
    source = ImageSource(fetcher, files, limits=limits)
    analyser = ImageAnalyser() if settings.image_analysis else None
    # The lock files are shared by every chatgate process using this data directory (this host's).
    heavy = HeavyWork(settings.data_dir / "locks", slots=settings.heavy_concurrency)
    preparer = ImagePreparer(source, analyser, heavy)
    return Outside(upstream_client(), RelaySession(), fetcher, files, preparer, heavy)


def build_registry(
    settings: Settings, catalogue: Catalogue, outside: Outside, progress: Progress | None = None
) -> ModelRegistry:
    routes: list[Route] = []
    aliases: dict[str, str] = {}
    created = int(time.time())
    engines = Engines(settings, outside.relay, outside.heavy, progress)
    http = outside.http
    derived: list[CatalogueEntry] = []
    embedding_routes: list[EmbeddingRoute] = []
    for entry in catalogue.models:
        if entry.embeddings:
            embedder = _embedder(settings, entry, outside, engines, progress)
            embedding_routes.append(
                EmbeddingRoute(entry.name, entry.owned_by, created, embedder, entry.price)
            )
            aliases.update({alias: entry.name for alias in entry.aliases})
            continue
        if entry.derived is not None:
            derived.append(entry)  # built on other models: the second pass, once every ordinary route exists
            aliases.update({alias: entry.name for alias in entry.aliases})
            continue
        ordinary = _ordinary(entry)
        built = [engines.provider(entry.name, i, d) for i, d in enumerate(ordinary)]
        deployments = [
            Deployment(
                name=_name(d, p),
                provider=p,
                weight=d.weight,
                max_concurrency=_limit(d),
                id=deployment_id,
                model=entry.name,
                kind="local" if isinstance(d, LocalDeployment) else "upstream",
            )
            for d, (p, _), deployment_id in zip(ordinary, built, deployment_ids(entry), strict=True)
        ]
        # Every deployment is behind a router, so the operator can disable any of them. A lone local
        # engine is not retried: its full queue is a 429 at once, as it always was.
        lone_local = len(built) == 1 and isinstance(ordinary[0], LocalDeployment)
        provider: AnyProvider = RouterProvider(deployments, retries=0 if lone_local else entry.retries)
        # A lone local engine's fingerprint is known now; several deployments each tell their own
        # as they start answering.
        fingerprint: str | None = built[0][1] if lone_local else None
        vision = all(d.vision for d in ordinary)
        routes.append(Route(entry.name, entry.owned_by, created, provider, fingerprint, entry.price, vision))
        aliases.update({alias: entry.name for alias in entry.aliases})
    plain = ModelRegistry(list(routes), dict(aliases))
    for entry in derived:
        assert entry.derived is not None
        base = _base(plain, entry.derived.base, entry.name)
        if isinstance(entry.derived, BrowsingDeployment):
            provider = _browsing(settings, entry.derived, base, http, outside.heavy)
            route = Route(entry.name, entry.owned_by, created, provider, base.fingerprint, entry.price)
        else:
            provider = _drawing(settings, entry.name, entry.derived, base, plain, outside)
            route = Route(
                entry.name,
                entry.owned_by,
                created,
                provider,
                base.fingerprint,
                entry.price,
                handles_images=True,
            )
        routes.append(route)
    return ModelRegistry(routes, aliases, embedding_routes)


def _embedder(
    settings: Settings,
    entry: CatalogueEntry,
    outside: Outside,
    engines: "Engines",
    progress: Progress | None,
) -> Embedder:
    """An embedding model's engine, or its upstreams and engines behind a router. A local model is
    loaded here, or, when the server runs several workers, is a link to the engine process that
    loads it once for all (the worker then never imports ONNX Runtime or the tokenizer)."""
    choices: list[Choice] = []
    alone: Embedder | None = None  # a lone local model needs no router
    for index, deployment in enumerate(entry.embeddings):
        embedder: Embedder
        if isinstance(deployment, UpstreamEmbeddingDeployment):
            upstream = UpstreamEmbedder(entry.name, deployment, outside.relay)
            embedder, label, limit = upstream, upstream.name, deployment.max_concurrency
        else:
            assert isinstance(deployment, LocalEmbeddingDeployment)
            label, limit = f"local:{deployment.asset or deployment.path}", None
            if engines.link is not None:
                key = embedding_key(entry.name, index)
                embedder = alone = SharedEmbedder(engines.link, key, entry.name, label)
            else:
                embedder = alone = local_embedder(
                    settings, entry.name, deployment, engines, outside.heavy, progress
                )
        choices.append(Choice(label, embedder, deployment.weight, limit))
    if len(choices) == 1 and alone is not None:
        return alone
    return EmbeddingRouter(choices, retries=entry.retries)  # an upstream alone is retried too


def local_embedder(
    settings: Settings,
    name: str,
    deployment: LocalEmbeddingDeployment,
    engines: "Engines",
    heavy: HeavyWork,
    progress: Progress | None,
) -> "LocalEmbedder":
    """A local embedding model, loaded (ONNX Runtime and the tokenizer are imported here, on first use)."""
    from chatgate.providers.embeddings import local as local_embeddings

    encoder, longest = local_embeddings.load(deployment, settings.models_path, progress)
    return local_embeddings.LocalEmbedder(name, deployment, encoder, longest, engines.budget(), heavy=heavy)


def create_engine_host(settings: Settings, progress: Progress | None = None) -> EngineHost:
    """The engine process's app: every local deployment of the catalogue (chat and embeddings),
    loaded here once for all workers."""
    heavy = HeavyWork(settings.data_dir / "locks", slots=settings.heavy_concurrency)
    engines = Engines(settings, RelaySession(), heavy, progress, shared=False)
    providers: dict[str, AnyProvider] = {}
    embedders: dict[str, LocalEmbedder] = {}
    for entry in effective_catalogue(settings).models:
        for index, embedding in enumerate(entry.embeddings):
            if isinstance(embedding, LocalEmbeddingDeployment):
                embedders[embedding_key(entry.name, index)] = local_embedder(
                    settings, entry.name, embedding, engines, heavy, progress
                )
        if entry.derived is not None:
            continue
        for index, deployment in enumerate(_ordinary(entry)):
            if isinstance(deployment, LocalDeployment):
                providers[deployment_key(entry.name, index)] = engines.provider(
                    entry.name, index, deployment
                )[0]
    return EngineHost(providers, embedders)


def has_local_models(settings: Settings) -> bool:
    """Whether the catalogue has a local model (chat or embeddings): with several workers, an engine
    process then loads them once for all."""
    catalogue = effective_catalogue(settings).models
    return any(
        isinstance(d, LocalDeployment)
        for entry in catalogue
        if entry.derived is None
        for d in _ordinary(entry)
    ) or any(isinstance(d, LocalEmbeddingDeployment) for entry in catalogue for d in entry.embeddings)


class Engines:
    """Builds each deployment's provider: upstreams here; local models here too, or, when the server
    runs several workers (``settings.engine_socket``), as links to the one engine process that serves
    them all (each worker keeps only the model's vocabulary, to check and bound requests before they
    are admitted). The local engine's modules (llama.cpp) are imported only when a local model is
    in the catalogue."""

    def __init__(
        self,
        settings: Settings,
        relay: RelaySession,
        heavy: HeavyWork,
        progress: Progress | None,
        *,
        shared: bool = True,
    ) -> None:
        self.settings = settings
        self.relay = relay
        self.heavy = heavy
        self.progress = progress
        self.link = EngineLink(settings.engine_socket) if shared and settings.engine_socket else None
        self._budget: ThreadBudget | None = None

    def provider(
        self, model: str, index: int, deployment: LocalDeployment | UpstreamDeployment
    ) -> tuple[AnyProvider, str | None]:
        """A deployment's provider and its system fingerprint (an upstream's is the one it sends, if any)."""
        if isinstance(deployment, UpstreamDeployment):
            return UpstreamProvider(deployment, self.relay), None  # an upstream's is the one it sends
        fingerprint = _fingerprint(deployment)
        if self.link is not None:
            name = f"local:{deployment.asset or deployment.path}"
            planner = self._local(deployment, plans_only=True)  # the vocabulary, not the weights
            return SharedEngineProvider(self.link, deployment_key(model, index), name, planner), fingerprint
        return self._local(deployment), fingerprint

    def budget(self) -> "ThreadBudget":
        """The host's compute threads, one budget for every local model of this process."""
        from chatgate.providers.local.cores import FreeCores
        from chatgate.providers.local.pool import ThreadBudget

        if self._budget is None:  # a step's threads: no more than the cores other work leaves idle
            self._budget = ThreadBudget(self.settings.engine_threads, free=FreeCores())
        return self._budget

    def _local(self, deployment: LocalDeployment, *, plans_only: bool = False) -> AnyProvider:
        from chatgate.providers.local.provider import LocalProvider

        if deployment.asset is not None:
            path = assets.ensure(assets.resolve(deployment.asset), self.settings.models_path, self.progress)
        else:
            assert deployment.path is not None
            path = Path(deployment.path)
        return LocalProvider(
            path=path,
            deployment=deployment,
            budget=self.budget(),
            max_queue=self.settings.max_queue,
            fingerprint=_fingerprint(deployment),
            heavy=self.heavy,
            plans_only=plans_only,
        )


def _fingerprint(deployment: LocalDeployment) -> str:
    """A local model's system fingerprint: its file's identity and the engine's build (without
    loading the model)."""
    from chatgate.providers.local import build

    if deployment.asset is not None:
        return build.fingerprint(assets.resolve(deployment.asset).sha256)
    assert deployment.path is not None
    path = Path(deployment.path)
    stat = path.stat()
    return build.fingerprint(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}")


def _ordinary(entry: CatalogueEntry) -> list[LocalDeployment | UpstreamDeployment]:
    return [d for d in entry.all_deployments if isinstance(d, LocalDeployment | UpstreamDeployment)]


def _base(registry: ModelRegistry, name: str, of: str) -> Route:
    try:
        return registry.resolve(name)
    except ChatgateError as exc:
        raise ConfigError(
            f"model {of!r} is built on {name!r}, which is not a model of the catalogue"
        ) from exc


def _browsing(
    settings: Settings,
    deployment: BrowsingDeployment,
    base: Route,
    http: httpx.AsyncClient,
    heavy: HeavyWork,
) -> AnyProvider:
    """A model that searches, reads and answers with its base model, citing its sources."""
    fetcher = GuardedFetcher(
        allow_hosts=settings.allowed_hosts,
        max_bytes=deployment.fetch_max_bytes,
        timeout=deployment.fetch_timeout,
    )
    backend = search.backend(deployment.search, http, settings.index_path)
    return BrowsingProvider(deployment, base.provider, base.name, backend, fetcher, heavy)


def _drawing(
    settings: Settings,
    name: str,
    deployment: ImageGenerationDeployment,
    base: Route,
    plain: ModelRegistry,
    outside: Outside,
) -> AnyProvider:
    """A model that draws: its base model plans the image, a backend makes it."""
    backend: backends.ImageBackend
    if deployment.backend.backend == "sketch":
        drawer = _base(plain, deployment.backend.model or deployment.base, name)
        backend = backends.SketchBackend(drawer.provider, max_shapes=deployment.backend.max_shapes)
    else:
        backend = backends.ImagesAPI(deployment.backend, outside.http, outside.fetcher, outside.heavy)
    return ImageGenerationProvider(
        base=base.provider,
        base_vision=base.vision,
        backend=backend,
        store=outside.files,
        preparer=outside.images,
        sizes=deployment.sizes,
        image_price=deployment.image_price,
        name=name,
    )


def _name(deployment: LocalDeployment | UpstreamDeployment, provider: AnyProvider) -> str:
    if isinstance(provider, UpstreamProvider):
        return provider.name
    return f"local:{deployment.asset or deployment.path}" if isinstance(deployment, LocalDeployment) else "?"


def _limit(deployment: LocalDeployment | UpstreamDeployment) -> int | None:
    return deployment.max_concurrency if isinstance(deployment, UpstreamDeployment) else None


async def _settled(metering: Metering, seconds: float) -> None:
    """Wait (at most ``seconds``) for the requests this process still holds credits for: at shutdown,
    those cancelled at the drain deadline settle, for what they delivered, on their way out."""
    deadline = time.monotonic() + seconds
    while metering.in_flight() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if metering.in_flight():
        log.warning(
            "%d requests had not settled at shutdown; a sweep refunds them", len(metering.in_flight())
        )


async def _sweep_files(files: FileStore, stored: ResponseStore, every: float = 600.0) -> None:
    """Expired files and stored responses go every ten minutes (and once at start-up)."""
    while True:
        try:
            removed = await files.sweep()
            if removed:
                log.info("removed %d expired files", removed)
        except OSError as exc:
            log.warning("file sweep failed: %s", exc)
        try:
            removed = await stored.sweep()
            if removed:
                log.info("removed %d expired stored responses", removed)
        except Exception as exc:  # the database is unreachable for now: the next round tries again
            log.warning("stored responses sweep failed: %s", exc)
        await asyncio.sleep(every)


def upstream_client() -> httpx.AsyncClient:
    """The one pooled HTTP client every upstream call shares."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60),
        timeout=httpx.Timeout(120.0, connect=10.0),
        trust_env=False,
    )


@dataclass
class Services:
    """Everything the HTTP edge and the console call, built once."""

    db: Database
    registry: ModelRegistry
    auth: AuthService
    accounts: AccountService
    tokens: TokenService
    chat: ChatService
    usage: UsageRecorder
    limiter: RateLimiter
    images: ImageService
    files: FileService
    metering: Metering
    recovery: Recovery
    embeddings: EmbeddingService
    deployments: DeploymentMonitor
    audit: AuditLog
    requests: RequestLog
    mail: AccountMail
    groups: GroupService
    codes: RedemptionService
    responses: ResponsesService
    messages: MessagesService
    stored_responses: ResponseStore
    invites: InviteService
    hashing: PasswordHashing

    async def aclose(self) -> None:
        self.hashing.close()
        await self.limiter.aclose()
        await self.db.dispose()


def account_rules(settings: Settings) -> AccountRules:
    return AccountRules(
        signup=settings.signup_mode,
        signups_per_hour=settings.signups_per_hour,
        free_credits=settings.free_credits,
        session_hours=settings.session_hours,
        login_free_attempts=settings.login_free_attempts,
        login_address_free_attempts=settings.login_address_free_attempts,
        login_max_delay=settings.login_max_delay,
        limits=UserLimits(settings.default_rpm, settings.default_tpm, settings.default_concurrency),
        tokens_per_user=settings.tokens_per_user,
        require_verification=settings.email_verification,
    )


def build_services(
    settings: Settings,
    registry: ModelRegistry,
    outside: Outside | None = None,
    health: HealthPolicy | None = None,
    *,
    models: Container[str] | None = None,
) -> Services:
    """The services over ``registry``; ``models`` (default: the registry's) are the names a token's
    allow-list may hold."""
    db = Database(settings.database)
    limiter = build_limiter(settings)
    rules = account_rules(settings)
    hashing = PasswordHashing(workers=settings.password_hash_workers, queue=settings.password_hash_queue)
    recorder = UsageRecorder(
        db,
        flush_seconds=settings.usage_flush_seconds,
        batch_rows=None if db.is_sqlite else POSTGRES_BATCH_ROWS,
    )
    outside = outside or build_outside(settings)
    money = DatabaseMoney(db)
    owner = new_owner()
    metering = Metering(money, limiter, recorder, owner=owner.owner, models=registry)
    metering.metrics.add_source(db.metrics_lines)
    recovery = Recovery(money, owner, lease_seconds=settings.lease_seconds, in_flight=metering.in_flight)
    chat_service = ChatService(registry, metering, images=outside.images)
    accounts = AccountService(db, rules=rules, limiter=limiter, hashing=hashing)
    stored = ResponseStore(db, retention_seconds=settings.responses_retention_hours * 3600)
    return Services(
        db=db,
        registry=registry,
        auth=AuthService(db, master_key(settings), limits=rules.limits),
        accounts=accounts,
        tokens=TokenService(
            db, models=models if models is not None else registry.names(), max_live=settings.tokens_per_user
        ),
        chat=chat_service,
        usage=recorder,
        limiter=limiter,
        images=ImageService(registry, metering),
        files=FileService(outside.files, max_pixels=settings.image_max_pixels, heavy=outside.heavy),
        metering=metering,
        recovery=recovery,
        embeddings=EmbeddingService(registry, metering),
        deployments=DeploymentMonitor(
            db, registry, policy=health, sync_seconds=settings.deployment_sync_seconds
        ),
        audit=AuditLog(db),
        requests=RequestLog(db, flush=recorder.flush),
        mail=AccountMail(db, mailer(settings), accounts, base_url=settings.base_url),
        groups=GroupService(db, registry, chat_service.plan),
        codes=RedemptionService(
            db,
            limiter,
            per_user=settings.redeem_per_user_hour,
            per_address=settings.redeem_per_address_hour,
        ),
        responses=ResponsesService(chat_service, stored),
        messages=MessagesService(chat_service),
        stored_responses=stored,
        invites=InviteService(db),
        hashing=hashing,
    )


def mailer(settings: Settings) -> SmtpMailer | None:
    """The SMTP client for verification and reset links, if the settings name a server."""
    if not settings.smtp_host or not settings.smtp_from:
        return None
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return SmtpMailer(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=password,
            security=settings.smtp_security,
            timeout=settings.smtp_timeout,
        )
    )


def build_limiter(settings: Settings) -> RateLimiter:
    """Where a token's per-minute counts live: Redis when configured (shared by replicas), a file of
    counters shared by this host's workers when there are several, this process's memory otherwise."""
    if settings.redis_url:
        return RedisRateLimiter(
            settings.redis_url, fail_closed=settings.fail_closed, lease_seconds=settings.limits_lease_seconds
        )
    if settings.worker_count > 1:
        return HostRateLimiter(CounterStore(settings.limits_path))
    return LocalRateLimiter()


def create_app(settings: Settings, *, progress: Progress | None = None) -> FastAPI:
    outside = build_outside(settings)
    catalogue = effective_catalogue(settings)
    registry = build_registry(settings, catalogue, outside, progress)
    services = build_services(settings, registry, outside, catalogue.health)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.db.check_schema()
        await services.usage.start()
        await services.recovery.start()  # takes this process's lease; refunds what dead ones held
        await outside.relay.open()
        for provider in registry.providers:
            await provider.start()
        for embedder in registry.embedders:
            await embedder.start()
        await services.deployments.start()
        sweeper = asyncio.create_task(_sweep_files(outside.files, services.stored_responses))
        heap.settle()  # start-up is done: what it allocated is kept out of every collection from now on
        try:
            yield
        finally:
            await _settled(services.metering, SETTLE_SECONDS)
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await services.deployments.stop()
            await outside.fetcher.aclose()
            for provider in registry.providers:
                await provider.aclose()
            for embedder in registry.embedders:
                await embedder.aclose()
            await services.recovery.stop()
            await services.usage.stop()
            await services.aclose()
            await outside.http.aclose()
            await outside.relay.close()
            outside.heavy.close()

    app = Gateway(
        body_limit=settings.body_limit,
        title="chatgate",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # a stray trailing slash is an enveloped 404, not a bare redirect
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.client_addresses = ClientAddresses(settings.trusted_proxy_networks)

    handlers: list[tuple[type[Exception], Callable[..., object]]] = [
        (ChatgateError, on_chatgate_error),
        (RequestValidationError, on_validation_error),
        (StarletteHTTPException, on_http_error),
    ]
    for exc_type, handler in handlers:
        app.add_exception_handler(exc_type, handler)  # type: ignore[arg-type]
    app.hot_routes = {f"{prefix}/chat/completions": chat.create_chat_completion for prefix in API_PREFIXES}
    for prefix in API_PREFIXES:
        app.include_router(chat.router, prefix=prefix)
        app.include_router(models.router, prefix=prefix)
        app.include_router(usage.router, prefix=prefix)
        app.include_router(images.router, prefix=prefix)
        app.include_router(embeddings.router, prefix=prefix)
        app.include_router(files.api_router, prefix=prefix)
        app.include_router(responses.router, prefix=prefix)
    for prefix in ("/v1", "/anthropic/v1"):
        app.include_router(messages.router, prefix=prefix)
    app.include_router(accounts.router, prefix="/api")
    app.include_router(verification.router, prefix="/api")
    app.include_router(billing.router, prefix="/api")
    app.include_router(console_api.router, prefix="/api")
    app.include_router(console_admin.router, prefix="/api/admin")
    app.include_router(console_business.router, prefix="/api/admin")
    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(reference.router)  # /openapi.json (built from every route on first use), /docs
    app.include_router(pages.router)
    app.add_middleware(BodyLimit, limit=settings.body_limit)
    app.add_middleware(CatchAll)
    app.add_middleware(TraceMiddleware)  # the outermost: every answer above carries the trace id
    return app
