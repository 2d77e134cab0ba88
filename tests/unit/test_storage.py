"""The schema is checked at start-up, and only migrations create it."""

import asyncio
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
