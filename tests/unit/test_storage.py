"""The schema is checked at start-up, and only migrations create it."""

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chatgate.errors import ConfigError
from chatgate.storage.database import Database, head_revision, migrate


def test_a_database_behind_the_code_is_a_clear_error(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    try:
        with pytest.raises(ConfigError, match="chatgate migrate"):
            asyncio.run(db.check_schema())
    finally:
        asyncio.run(db.dispose())


def test_migrate_brings_the_schema_to_head(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    migrate(url)
    db = Database(url)
    try:
        asyncio.run(db.check_schema())
        assert asyncio.run(db.current_revision()) == head_revision()
    finally:
        asyncio.run(db.dispose())


def test_the_head_read_from_the_migration_files_is_alembics_and_serving_needs_no_alembic(
    tmp_path: Path,
) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from chatgate.storage.database import alembic_config

    assert head_revision() == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    url = f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    migrate(url)
    with create_engine(f"sqlite:///{tmp_path / 'read.db'}").connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()
    # A fresh interpreter that checks a schema and opens the fast path imports neither Alembic nor asyncpg.
    script = (
        "import asyncio, sys\n"
        "from chatgate.storage.database import Database\n"
        f"db = Database({url!r})\n"
        "asyncio.run(db.check_schema())\n"
        "asyncio.run(db.dispose())\n"
        "print(sorted(m for m in ('alembic', 'asyncpg') if m in sys.modules))\n"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_the_migrations_build_exactly_the_tables_the_code_declares(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from chatgate.storage.tables import Base

    migrate(f"sqlite+aiosqlite:///{tmp_path / 'drift.db'}")
    engine = create_engine(f"sqlite:///{tmp_path / 'drift.db'}")
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


NOW = "2026-11-25 12:00:00.000000"


def test_upgrading_hands_reservations_left_open_to_no_owner_and_verify_says_what_is_wrong(
    tmp_path: Path,
) -> None:
    """A database that crashed before revision 0003 held credits for ever; after the upgrade they are
    an open reservation with no lease (the first sweep gives them back), and the ledger adds up."""
    from alembic import command

    from chatgate.storage.database import alembic_config

    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    command.upgrade(alembic_config(url), "0002")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO users (id, email, is_admin, disabled, credits, created_at) VALUES (1, 'a@b.c', 0, 0, 40, ?)",
            (NOW,),
        )
        for trace, kind, amount in [("signup_1", "grant", 100), ("t1", "reserve", -40), ("t1", "settle", 10),
                                    ("t2", "reserve", -30)]:  # fmt: skip
            conn.execute(
                "INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at) VALUES (?, ?, 1, NULL, ?, ?)",
                (trace, kind, amount, NOW),
            )
        conn.execute(
            "INSERT INTO usage_log (trace_id, user_id, token_id, model, prompt_tokens, completion_tokens, cost,"
            " latency_ms, status, error_code, day, created_at) VALUES ('t1', 1, NULL, 'm', 1, 1, 30, 1, 'ok', NULL,"
            " '2026-11-25', ?)",
            (NOW,),
        )
    migrate(url)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT trace_id, amount, owner FROM reservations").fetchall() == [
            ("t2", 30, "before-0003")
        ]
    env = {**os.environ, "CHATGATE_DATABASE_URL": url}
    verify = [sys.executable, "-m", "chatgate", "ledger", "verify"]
    done = subprocess.run(verify, env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "ledger verified: 1 users, 0 tokens, 1 open reservations\n")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE users SET credits = credits + 5 WHERE id = 1")  # credits out of nowhere
    done = subprocess.run(verify, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "user 1: the ledger adds up to 40, the balance is 45",
        "user 1: granted 100 != balance 45 + settled 30 + open 30 (= 105)",
    ]
