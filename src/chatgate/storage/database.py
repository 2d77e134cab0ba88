"""The database connection: engine, sessions, and the check that the schema is at the latest revision."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from chatgate.errors import ConfigError
from chatgate.storage.fastpath import FastPath, SqliteFastPath

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (migrations, the schema check) and asyncpg (PostgreSQL's fast path) are imported where they
# are used: a serving process on SQLite never needs asyncpg, and Alembic only at start-up; together
# about 25 MiB a process (issue 18: a gateway under 150 MiB).
MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> "Config":
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


_REVISION = re.compile(r'^revision = "([^"]+)"', re.MULTILINE)
_DOWN = re.compile(r'^down_revision = (?:None|"([^"]+)")', re.MULTILINE)


def head_revision() -> str | None:
    """The newest migration's revision: the one no other migration names as the one before it.

    Read from the migration files themselves rather than through Alembic's script directory, so a
    serving process checks its schema without importing Alembic (tests/unit/test_migrations.py holds
    this to Alembic's own answer)."""
    revisions: set[str] = set()
    below: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        text = script.read_text()
        found, down = _REVISION.search(text), _DOWN.search(text)
        if found is None or down is None:
            raise ConfigError(f"{script.name} is not a migration: no revision or down_revision")
        revisions.add(found.group(1))
        if down.group(1) is not None:
            below.add(down.group(1))
    heads = revisions - below
    if len(heads) > 1:
        raise ConfigError(f"The migrations have several heads: {sorted(heads)}")
    return heads.pop() if heads else None


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        options: dict[str, Any] = {}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30}
        else:
            options.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **options)
        self._fast: FastPath | None = None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            if parsed.database and parsed.database != ":memory:":
                self._fast = SqliteFastPath(parsed.database)
        elif parsed.get_backend_name() == "postgresql":
            from chatgate.storage.fastpath_postgres import PostgresFastPath

            self._fast = PostgresFastPath(url)
        else:
            raise ConfigError(f"chatgate runs on SQLite or PostgreSQL, not {parsed.get_backend_name()}.")
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def fast(self) -> FastPath:
        """The token lookup and the credit reservation, the two queries on every request's path."""
        if self._fast is None:
            raise ConfigError("An in-memory database holds no API tokens or credits; use a database file.")
        return self._fast

    @property
    def sqlite_fast(self) -> SqliteFastPath | None:
        """SQLite's fast path (for small writes that must not hold the lock across awaits), if on SQLite."""
        return self._fast if isinstance(self._fast, SqliteFastPath) else None

    def metrics_lines(self) -> list[str]:
        """The fast path's counters for ``/metrics`` (SQLite's; none on PostgreSQL)."""
        return self._fast.stats.lines() if isinstance(self._fast, SqliteFastPath) else []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read-only session whose every query sees the database at one moment."""
        async with self.engine.connect() as connection:
            if self.is_sqlite:
                await connection.exec_driver_sql("BEGIN")  # the driver would begin only before a write
            else:
                connection = await connection.execution_options(isolation_level="REPEATABLE READ")
            async with AsyncSession(bind=connection) as session:
                yield session

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_revision_of)

    async def check_schema(self) -> None:
        """Refuse to serve on a schema that is behind (or ahead of) this code."""
        current, head = await self.current_revision(), head_revision()
        if current != head:
            raise ConfigError(
                f"The database schema is at revision {current or 'none'}, this chatgate needs {head}. "
                "Run `chatgate migrate`."
            )

    async def dispose(self) -> None:
        if self._fast is not None:
            await self._fast.aclose()
        await self.engine.dispose()


def _revision_of(connection: Connection) -> str | None:
    """The revision Alembic recorded (``alembic_version``), None before the first migration."""
    if not connection.dialect.has_table(connection, "alembic_version"):
        return None
    rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
    if len(rows) > 1:
        raise ConfigError(f"The database records several schema revisions: {[r[0] for r in rows]}")
    return str(rows[0][0]) if rows else None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def migrate(url: str) -> None:
    """Bring the schema to the latest revision (``chatgate migrate``)."""
    from alembic import command

    if make_url(url).get_backend_name() == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
