"""The ``chatgate`` command: argument parsing only."""

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from chatgate import ranges
from chatgate.errors import ChatgateError
from chatgate.ranges import Range

if TYPE_CHECKING:
    from chatgate.app import Services


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

DEFAULT = "default"  # a user's limit set back to the server's


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, as every other error of the command is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"chatgate: {message}\n")


def _number(limits: Range, *, default_ok: bool = False) -> Callable[[str], int | str]:
    """An argument checked against one of the shared ranges (the API and settings use the same)."""

    def parse(text: str) -> int | str:
        if default_ok and text == DEFAULT:
            return DEFAULT
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(limits.describe(text)) from None
        if not limits.contains(value):
            raise argparse.ArgumentTypeError(limits.describe(value))
        return value

    return parse


def _serve(args: argparse.Namespace) -> int:
    from chatgate.config import load_settings
    from chatgate.server import serve

    given = {"host": args.host, "port": args.port, "catalogue": args.config, "workers": args.workers}
    overrides = {k: v for k, v in given.items() if v is not None}  # --port 0 (any free port) counts
    return serve(load_settings(**overrides), _progress)


def _engine(args: argparse.Namespace) -> int:
    from chatgate.config import Settings
    from chatgate.server import serve_engine

    overrides = {"catalogue": args.config} if args.config else {}
    return serve_engine(Settings(**overrides), args.socket, _progress)


def _models(args: argparse.Namespace) -> int:
    from chatgate.config import LocalDeployment, LocalEmbeddingDeployment, load_catalogue, load_settings
    from chatgate.providers.embeddings import assets as embedding_assets
    from chatgate.providers.local import assets

    settings = load_settings(**({"catalogue": args.config} if args.config else {}))
    names = args.asset or [
        d.asset
        for e in load_catalogue(settings.catalogue).models
        for d in e.all_deployments
        if isinstance(d, LocalDeployment | LocalEmbeddingDeployment) and d.asset
    ]
    for name in dict.fromkeys(names):
        if name in embedding_assets.ASSETS:  # made into an ONNX model from its verified files
            path = embedding_assets.ensure(embedding_assets.resolve(name), settings.models_path, _progress)
            print(f"{name}: {path} (sources sha256 verified, ONNX model made and verified)")
            continue
        path = assets.ensure(assets.resolve(name), settings.models_path, _progress)
        print(f"{name}: {path} (sha256 verified)")
    return 0


async def _with_services(work: "Callable[[Services], Awaitable[int]]") -> int:
    """Run a command against the database (schema checked) without loading any model."""
    from chatgate.app import build_services
    from chatgate.config import effective_catalogue, load_settings
    from chatgate.services.catalogue import ModelRegistry

    settings = load_settings()
    models = effective_catalogue(settings).names()  # for tokens' allow-lists; no model is loaded
    services = build_services(settings, ModelRegistry([], {}), models=models)
    try:
        await services.db.check_schema()
        return await work(services)
    finally:
        await services.aclose()


def _migrate(args: argparse.Namespace) -> int:
    from chatgate.config import load_settings
    from chatgate.storage.database import head_revision, migrate

    settings = load_settings()
    migrate(settings.database)
    print(f"database schema at revision {head_revision()}")
    return 0


def _admin_create(args: argparse.Namespace) -> int:
    password = args.password or getpass.getpass("password for the new admin: ")

    async def work(services: "Services") -> int:
        account = await services.accounts.create_admin(args.email, password)
        print(f"admin {account.email} (id {account.id}) ready")
        return 0

    return asyncio.run(_with_services(work))


def _keys_create(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        account = await services.accounts.ensure(args.user)
        info, secret = await services.tokens.create(
            account.id,
            name=args.name,
            quota_cap=args.quota,
            allowed_models=args.model or None,
            rpm_limit=args.rpm,
            tpm_limit=args.tpm,
        )
        print(
            f"created token {info.prefix}... (id {info.id}) for {account.email}; it is shown only this once:"
        )
        print(secret)
        return 0

    return asyncio.run(_with_services(work))


def _keys_list(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        account = await services.accounts.by_email(args.user)
        for t in await services.tokens.list(account.id):
            state = "revoked" if t.revoked_at else "active"
            cap = "-" if t.quota_cap is None else str(t.quota_cap)
            print(
                f"{t.id}\t{t.prefix}...\t{t.name}\t{state}\tspent={t.spent}\tcap={cap}\tlast_used={t.last_used_at}"
            )
        return 0

    return asyncio.run(_with_services(work))


def _keys_revoke(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        token = await services.tokens.find(args.token)
        await services.tokens.revoke(token.user_id, token.id)
        print(f"revoked token {token.prefix}... (id {token.id})")
        return 0

    return asyncio.run(_with_services(work))


def _quota_grant(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        account = await services.accounts.ensure(args.user)
        account = await services.accounts.grant(account.id, args.credits)
        print(f"{account.email} now has {account.credits} credits")
        return 0

    return asyncio.run(_with_services(work))


def _ledger_verify(args: argparse.Namespace) -> int:
    from chatgate.config import load_settings
    from chatgate.storage.database import Database
    from chatgate.storage.reservations import discrepancies

    async def work() -> int:
        db = Database(load_settings().database)
        try:
            await db.check_schema()
            async with db.snapshot() as session:
                problems, counts = await discrepancies(session)
        finally:
            await db.dispose()
        for problem in problems:
            print(problem)
        if problems:
            return 1
        print(
            f"ledger verified: {counts['users']} users, {counts['tokens']} tokens, "
            f"{counts['open']} open reservations"
        )
        return 0

    return asyncio.run(work())


def _codes_create(args: argparse.Namespace) -> int:
    from chatgate.services.audit import OPERATOR

    async def work(services: "Services") -> int:
        made = await services.codes.create(
            credits=args.credits,
            count=args.count,
            expires_in_days=args.expires_in,
            note=args.note,
            actor=OPERATOR,
        )
        expiry = f", expiring in {args.expires_in} days" if args.expires_in else ""
        print(f"created {len(made)} codes worth {args.credits} credits each{expiry}; shown only this once:")
        for code in made:
            print(code)
        return 0

    return asyncio.run(_with_services(work))


def _codes_list(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        offset = 0
        while True:
            page = await services.codes.page(state=args.state, limit=200, offset=offset)
            for c in page["data"]:
                who = f"\tredeemed by {c['redeemed_by']}" if c["redeemed_by"] else ""
                print(f"{c['id']}\t{c['code']}\t{c['credits']}\t{c['state']}\t{c['note'] or ''}{who}")
            offset += len(page["data"])
            if offset >= page["total"] or not page["data"]:
                return 0

    return asyncio.run(_with_services(work))


def _codes_disable(args: argparse.Namespace) -> int:
    from chatgate.services.audit import OPERATOR

    async def work(services: "Services") -> int:
        for code_id in args.id:
            await services.codes.disable(code_id, OPERATOR)
            print(f"disabled code {code_id}")
        return 0

    return asyncio.run(_with_services(work))


def _invites_create(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        info, code = await services.invites.create(uses=args.uses, days=args.days, note=args.note)
        expires = info.expires_at.date().isoformat() if info.expires_at else "never"
        print(
            f"created invite {info.prefix}... (id {info.id}) for {info.max_uses} sign-up(s), expires {expires}; "
            "it is shown only this once:"
        )
        print(code)
        return 0

    return asyncio.run(_with_services(work))


def _invites_list(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        for i in await services.invites.list(limit=1000):
            state = "withdrawn" if i.revoked_at else f"used {i.uses}/{i.max_uses}"
            expires = i.expires_at.isoformat() if i.expires_at else "never"
            print(f"{i.id}\t{i.prefix}...\t{state}\texpires={expires}\t{i.note}")
        return 0

    return asyncio.run(_with_services(work))


def _invites_revoke(args: argparse.Namespace) -> int:
    async def work(services: "Services") -> int:
        info = await services.invites.revoke(args.id)
        print(f"withdrew invite {info.prefix}... (id {info.id})")
        return 0

    return asyncio.run(_with_services(work))


def _users_limits(args: argparse.Namespace) -> int:
    given = {"rpm_limit": args.rpm, "tpm_limit": args.tpm, "concurrency_limit": args.concurrency}
    changes = {k: (None if v == DEFAULT else v) for k, v in given.items() if v is not None}

    async def work(services: "Services") -> int:
        account = await services.accounts.by_email(args.user)
        if changes:
            account = await services.accounts.set_limits(account.id, changes)
        limits = services.accounts.principal(account).user

        def shown(own: int | None, effective: int | None) -> str:
            value = "none" if effective is None else str(effective)
            return value if own is not None else f"{value} (default)"

        print(
            f"{account.email}: rpm={shown(account.rpm_limit, limits.rpm)} tpm={shown(account.tpm_limit, limits.tpm)} "
            f"concurrency={shown(account.concurrency_limit, limits.concurrency)}"
        )
        return 0

    return asyncio.run(_with_services(work))


def _index_add(args: argparse.Namespace) -> int:
    from chatgate.config import load_settings
    from chatgate.providers.browsing.index import LocalIndex, add_sources
    from chatgate.providers.web.fetch import GuardedFetcher

    settings = load_settings()

    async def work() -> int:
        fetcher = GuardedFetcher(allow_hosts=settings.allowed_hosts)
        try:
            added = await add_sources(LocalIndex(settings.index_path), args.source, fetcher)
        finally:
            await fetcher.aclose()
        for item in added:
            if item.problem is None:
                print(f"added {item.url} ({item.passages} passages)")
            else:
                print(f"skipped {item.source}: {item.problem}", file=sys.stderr)
        return 0 if all(item.problem is None for item in added) else 1

    return asyncio.run(work())


def _index_search(args: argparse.Namespace) -> int:
    from chatgate.config import load_settings
    from chatgate.providers.browsing.index import LocalIndex

    for rank, hit in enumerate(
        LocalIndex(load_settings().index_path).search(args.query, args.limit), start=1
    ):
        text = " ".join(hit.text.split())
        print(f"{rank}. {hit.score:.4g} {hit.title} <{hit.url}>\n   {text[:200]}")
    return 0


def _index_list(args: argparse.Namespace) -> int:
    from chatgate.config import load_settings
    from chatgate.providers.browsing.index import LocalIndex

    for document in LocalIndex(load_settings().index_path).documents():
        print(f"{document.url}\t{document.passages} passages\t{document.title}")
    return 0


def _index_remove(args: argparse.Namespace) -> int:
    from chatgate.config import load_settings
    from chatgate.providers.browsing.index import LocalIndex

    index = LocalIndex(load_settings().index_path)
    missing = [url for url in args.url if not index.remove(url)]
    for url in missing:
        print(f"not in the index: {url}", file=sys.stderr)
    return 1 if missing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chatgate", description="OpenAI-compatible Chat Completions gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the API server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks a free one)")
    serve.add_argument("--config", type=Path, help="model catalogue YAML (default: the built-in one)")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes on the one port (default: 1 in development, one per CPU in production)",
    )
    serve.set_defaults(run=_serve)
    engine = sub.add_parser(
        "engine", help="serve the catalogue's local models on a Unix socket (what `serve --workers N` starts)"
    )
    engine.add_argument("--socket", type=Path, required=True, help="the Unix socket to listen on")
    engine.add_argument("--config", type=Path, help="model catalogue YAML (default: the built-in one)")
    engine.set_defaults(run=_engine)
    prepare = sub.add_parser("models", help="assemble and verify the local model files a catalogue needs")
    prepare.add_argument("--config", type=Path, help="model catalogue YAML (default: the built-in one)")
    prepare.add_argument("--asset", action="append", help="a model asset name (repeatable)")
    prepare.set_defaults(run=_models)
    sub.add_parser("migrate", help="bring the database schema to the latest revision").set_defaults(
        run=_migrate
    )

    admin = sub.add_parser("admin", help="administrators").add_subparsers(dest="admin_command", required=True)
    create_admin = admin.add_parser("create", help="create an admin (or make a user one)")
    create_admin.add_argument("--email", required=True)
    create_admin.add_argument("--password", help="default: asked for")
    create_admin.set_defaults(run=_admin_create)

    keys = sub.add_parser("keys", help="API tokens").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a token; it is printed alone on the last line")
    create.add_argument("--user", required=True, help="the owner's email (created if new)")
    create.add_argument("--name", default="cli")
    create.add_argument(
        "--quota", type=_number(ranges.CREDITS), help="at most this many credits through this token"
    )
    create.add_argument("--model", action="append", help="allow only this model (repeatable)")
    create.add_argument(
        "--rpm",
        type=_number(ranges.RPM),
        help="requests per minute through this token (default: only the user's limit)",
    )
    create.add_argument(
        "--tpm",
        type=_number(ranges.TPM),
        help="tokens per minute through this token (default: only the user's limit)",
    )
    create.set_defaults(run=_keys_create)
    listing = keys.add_parser("list", help="a user's tokens")
    listing.add_argument("--user", required=True)
    listing.set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a token by id or prefix")
    revoke.add_argument("token")
    revoke.set_defaults(run=_keys_revoke)

    quota = sub.add_parser("quota", help="credits").add_subparsers(dest="quota_command", required=True)
    grant = quota.add_parser("grant", help="add (or, negative, remove) credits")
    grant.add_argument("--user", required=True)
    grant.add_argument("--credits", type=_number(ranges.GRANT), required=True)
    grant.set_defaults(run=_quota_grant)

    ledger = sub.add_parser("ledger", help="the credit ledger").add_subparsers(
        dest="ledger_command", required=True
    )
    ledger.add_parser(
        "verify",
        help="check that every user's ledger adds up to the balance, and that credits granted = balance + "
        "settled charges + open reservations; one line per discrepancy, exit status 1 if any",
    ).set_defaults(run=_ledger_verify)

    codes = sub.add_parser("codes", help="top-up codes").add_subparsers(dest="codes_command", required=True)
    make_codes = codes.add_parser(
        "create", help="create codes; they are printed one a line, as the last lines"
    )
    make_codes.add_argument("--credits", type=int, required=True, help="what each code adds to a balance")
    make_codes.add_argument("--count", type=int, default=1, help="how many codes (default 1)")
    make_codes.add_argument("--expires-in", type=int, metavar="DAYS", help="unusable after this many days")
    make_codes.add_argument("--note", help="a note shown in the lists (a batch's purpose)")
    make_codes.set_defaults(run=_codes_create)
    list_codes = codes.add_parser("list", help="codes, newest first (only their first characters are kept)")
    list_codes.add_argument("--state", choices=["unused", "used", "expired", "disabled"])
    list_codes.set_defaults(run=_codes_list)
    disable_codes = codes.add_parser("disable", help="disable unused codes by id")
    disable_codes.add_argument("id", type=int, nargs="+")
    disable_codes.set_defaults(run=_codes_disable)

    users = sub.add_parser("users", help="users").add_subparsers(dest="users_command", required=True)
    limits = users.add_parser(
        "limits", help="show or set a user's limits across all their tokens ('default': the server's)"
    )
    limits.add_argument("--user", required=True)
    limits.add_argument("--rpm", type=_number(ranges.RPM, default_ok=True), help="requests per minute")
    limits.add_argument("--tpm", type=_number(ranges.TPM, default_ok=True), help="tokens per minute")
    limits.add_argument(
        "--concurrency", type=_number(ranges.CONCURRENCY, default_ok=True), help="requests at once"
    )
    limits.set_defaults(run=_users_limits)

    invites = sub.add_parser("invites", help="invite codes (for CHATGATE_SIGNUP=invite)").add_subparsers(
        dest="invites_command", required=True
    )
    invite = invites.add_parser("create", help="create a code; it is printed alone on the last line")
    invite.add_argument("--uses", type=_number(ranges.INVITE_USES), default=1, help="sign-ups it admits")
    invite.add_argument("--days", type=_number(ranges.INVITE_DAYS), default=30, help="days it stays valid")
    invite.add_argument("--note", default="", help="what it is for (shown in lists)")
    invite.set_defaults(run=_invites_create)
    invites.add_parser("list", help="every invite code, newest first").set_defaults(run=_invites_list)
    withdraw = invites.add_parser("revoke", help="withdraw an invite code by its id")
    withdraw.add_argument("id", type=_number(ranges.ID))
    withdraw.set_defaults(run=_invites_revoke)

    index = sub.add_parser("index", help="the local search index of browsing models").add_subparsers(
        dest="index_command", required=True
    )
    add = index.add_parser("add", help="add files (.html, .md, .txt, .pdf; directories recursively) or URLs")
    add.add_argument("source", nargs="+", metavar="PATH|URL")
    add.set_defaults(run=_index_add)
    find = index.add_parser("search", help="the passages a query finds, best first")
    find.add_argument("query")
    find.add_argument("--limit", type=_number(Range(1, 1000)), default=10)
    find.set_defaults(run=_index_search)
    index.add_parser("list", help="the documents in the index").set_defaults(run=_index_list)
    remove = index.add_parser("remove", help="remove documents by the URL they are cited as")
    remove.add_argument("url", nargs="+")
    remove.set_defaults(run=_index_remove)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ChatgateError as exc:
        print(f"chatgate: {exc.message}", file=sys.stderr)
        return 2
    return code
