"""Running chatgate: one process, or N worker processes on one port with the local engine in a process of its own.

One worker (the default in development) is one process doing everything, the local engine included.

With N workers (``chatgate serve --workers N``, ``CHATGATE_WORKERS``) the port is bound once here
and handed to N processes that each accept connections on it (uvicorn's supervisor, which also
replaces a worker that dies). They share everything that must be shared:

- the database (SQLite in WAL mode, each worker with its own fast path, or PostgreSQL);
- the rate limits: in Redis when ``CHATGATE_REDIS_URL`` is set, as across replicas; otherwise in a
  SQLite file of counters in the data dir that every worker updates atomically (``limits.db``);
- the local models: loaded once, in an engine process that this supervisor starts first and that
  every worker reaches over a Unix socket in a private directory (``providers/shared_engine``).

On SIGTERM (or Ctrl-C) a process drains: it stops accepting connections, lets the requests in
flight finish (streams included) for up to ``CHATGATE_DRAIN_SECONDS``, cancels what is left (each
cancelled request settles for what it delivered), writes its pending usage, and exits. The
supervisor drains its workers first and stops the engine last.
"""

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from queue import Queue
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors.multiprocess import Multiprocess

from chatgate.app import Progress, create_app, create_engine_host, has_local_models, master_key
from chatgate.config import Settings, effective_catalogue
from chatgate.errors import ConfigError

log = logging.getLogger("chatgate")
ENGINE_START_SECONDS = 600.0  # assembling and verifying model files can take minutes on first start


def configure_logging(settings: Settings) -> None:
    """Log lines go to stderr from a thread of their own: a write to a slow pipe or terminal never
    holds up the event loop (the request log writes a line for every request)."""
    root, requests_log = logging.getLogger(), logging.getLogger("chatgate.requests")
    if any(isinstance(h, QueueHandler) for h in root.handlers):
        return  # already done in this process
    plain = logging.StreamHandler()
    plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    bare = logging.StreamHandler()  # one JSON line per request, as is
    bare.setFormatter(logging.Formatter("%(message)s"))
    queue: Queue[logging.LogRecord] = Queue()
    listener = QueueListener(queue, _Route(plain, bare), respect_handler_level=False)
    listener.start()
    atexit.register(listener.stop)  # what is queued is written before the process exits
    root.handlers[:] = [QueueHandler(queue)]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per upstream call
    requests_log.handlers[:] = []
    requests_log.propagate = True  # through the root's queue; _Route writes it bare


class _Route(logging.Handler):
    """The listener's one handler: request lines bare, everything else with time, level and name."""

    def __init__(self, plain: logging.Handler, bare: logging.Handler) -> None:
        super().__init__()
        self._plain, self._bare = plain, bare

    def emit(self, record: logging.LogRecord) -> None:
        (self._bare if record.name == "chatgate.requests" else self._plain).handle(record)


def serve(settings: Settings, progress: Progress | None = None) -> int:
    configure_logging(settings)
    if settings.worker_count == 1:
        return _serve_one(settings, progress)
    return _serve_workers(settings, settings.worker_count)


def _announce(settings: Settings, host: str, port: int, names: str, workers: int = 1) -> None:
    key_note = "" if settings.api_key else f" (master key: {master_key(settings)})"
    processes = f" with {workers} workers" if workers > 1 else ""
    print(f"chatgate listening on http://{host}:{port}{processes} serving {names}{key_note}", flush=True)


def _serve_one(settings: Settings, progress: Progress | None) -> int:
    app = create_app(settings, progress=progress)
    names = ", ".join(m.id for m in app.state.services.registry.model_list().data)
    server = uvicorn.Server(_config(app, settings))
    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        await original_startup(sockets=sockets)
        if server.started:
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            _announce(settings, host, port, names)

    server.startup = startup  # type: ignore[method-assign]
    server.run()
    return 0


def _config(app: Any, settings: Settings, **more: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        # The client address is the socket's peer, or what CHATGATE_TRUSTED_PROXIES allows to be
        # believed of X-Forwarded-For (api/client.py), never uvicorn's own guess.
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        timeout_keep_alive=settings.keep_alive_seconds,
        **more,
    )


def worker_app() -> FastAPI:
    """One worker's app (uvicorn imports this in each worker process; its settings come from the
    environment the supervisor set)."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)


def _serve_workers(settings: Settings, workers: int) -> int:
    # The workers read their settings from the environment: what the command line set goes there too.
    os.environ.update(
        {
            "CHATGATE_HOST": settings.host,
            "CHATGATE_PORT": str(settings.port),
            "CHATGATE_CATALOGUE": str(settings.catalogue),
            "CHATGATE_WORKERS": str(workers),
        }
    )
    master_key(settings)  # a development key is made here, once, so that every worker reads the same one
    config = _config("chatgate.server:worker_app", settings, factory=True, workers=workers)
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    os.environ["CHATGATE_PORT"] = str(port)  # a port of 0 has become a real one: the workers' links use it
    names = ", ".join(entry.name for entry in effective_catalogue(settings).models)
    with contextlib.ExitStack() as stack:
        engine: EngineProcess | None = None
        if has_local_models(settings):
            engine = stack.enter_context(EngineProcess.running(settings))
            os.environ["CHATGATE_ENGINE_SOCKET"] = str(engine.socket)
        supervisor = Workers(config, [sock], engine, lambda: _announce(settings, host, port, names, workers))
        supervisor.run()
    return 0


class Workers(Multiprocess):
    """uvicorn's supervisor, which also says when every worker is ready and keeps the engine process alive."""

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        engine: "EngineProcess | None",
        ready: Callable[[], None],
    ) -> None:
        super().__init__(config, sockets)
        self.engine = engine
        self._ready = ready

    def init_processes(self) -> None:
        super().init_processes()
        ready = [
            process.wait_until_ready(ENGINE_START_SECONDS, self.should_exit) for process in self.processes
        ]
        if all(ready):
            self._ready()  # else a worker failed to start: the supervisor's next round stops everything

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        if self.engine is not None and not self.should_exit.is_set():
            self.engine.keep_alive()


class EngineProcess:
    """``chatgate engine``, started before the workers and stopped after them."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings = settings
        self.directory = directory
        self.socket = directory / "engine.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextlib.contextmanager
    def running(cls, settings: Settings) -> Any:
        # A private directory (mode 0700): the socket itself is world-writable, and whoever can reach
        # it runs the models unmetered. Under /tmp, so its path stays under the 108 bytes a socket allows.
        directory = Path(tempfile.mkdtemp(prefix="chatgate-engine-"))
        engine = cls(settings, directory)
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        command = [sys.executable, "-m", "chatgate", "engine", "--socket", str(self.socket)]
        self.process = subprocess.Popen(command, env=os.environ.copy())
        deadline = time.monotonic() + ENGINE_START_SECONDS
        while not self._answers():
            if self.process.poll() is not None:
                raise ConfigError(f"The engine process exited with status {self.process.returncode}.")
            if time.monotonic() > deadline:
                raise ConfigError("The engine process did not start in time.")
            time.sleep(0.1)

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(self.socket))
            return True
        return False

    def keep_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            log.error("the engine process exited (status %s); starting it again", self.process.returncode)
            self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # it drains too: the workers have gone already
        try:
            self.process.wait(timeout=self.settings.drain_seconds + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve_engine(settings: Settings, path: Path, progress: Progress | None = None) -> int:
    """The engine process: the catalogue's local models, served to the workers on a Unix socket."""
    configure_logging(settings)
    host = create_engine_host(settings, progress)
    if not host.providers and not host.embedders:
        raise ConfigError("The catalogue has no local models for an engine process to serve.")
    config = uvicorn.Config(
        host,
        uds=str(path),
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
    )
    uvicorn.Server(config).run()
    return 0
