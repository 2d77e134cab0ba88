"""The ``chatgate`` command: argument parsing only."""

import argparse
import logging
import sys
from pathlib import Path

from chatgate.errors import ChatgateError


class _Progress:
    """A progress meter on stderr for assembling and verifying model files: one redrawn line on a
    terminal, a line every 10% elsewhere (CI logs)."""

    def __init__(self) -> None:
        self._last: tuple[str, int] = ("", -1)

    def __call__(self, label: str, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        tty = sys.stderr.isatty()
        step = pct if tty else pct // 10 * 10
        if (label, step) == self._last:
            return
        self._last = (label, step)
        line = f"{label}: {pct:3d}% ({done >> 20}/{total >> 20} MiB)"
        if tty:
            print("\r" + line, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


_progress = _Progress()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from chatgate.app import create_app, master_key
    from chatgate.config import Settings

    given = {"host": args.host, "port": args.port, "catalogue": args.config}
    overrides = {k: v for k, v in given.items() if v is not None}  # --port 0 (any free port) counts
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_app(settings, progress=_progress)
    names = ", ".join(m.id for m in app.state.registry.model_list().data)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    original_startup = server.startup

    async def startup(sockets: object = None) -> None:
        await original_startup(sockets=sockets)  # type: ignore[arg-type]
        if server.started:
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            key_note = "" if settings.api_key else f" (master key: {master_key(settings)})"
            print(f"chatgate listening on http://{host}:{port} serving {names}{key_note}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()
    return 0


def _models(args: argparse.Namespace) -> int:
    from chatgate.config import Settings, load_catalogue
    from chatgate.providers.local import assets

    settings = Settings(**({"catalogue": args.config} if args.config else {}))
    names = args.asset or [
        e.deployment.asset for e in load_catalogue(settings.catalogue).models if e.deployment.asset
    ]
    for name in names:
        path = assets.ensure(assets.resolve(name), settings.models_path, _progress)
        print(f"{name}: {path} (sha256 verified)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatgate", description="OpenAI-compatible Chat Completions gateway"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the API server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks a free one)")
    serve.add_argument("--config", type=Path, help="model catalogue YAML (default: the built-in one)")
    serve.set_defaults(run=_serve)
    prepare = sub.add_parser("models", help="assemble and verify the local model files a catalogue needs")
    prepare.add_argument("--config", type=Path, help="model catalogue YAML (default: the built-in one)")
    prepare.add_argument("--asset", action="append", help="a model asset name (repeatable)")
    prepare.set_defaults(run=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ChatgateError as exc:
        print(f"chatgate: {exc.message}", file=sys.stderr)
        return 2
    return code
