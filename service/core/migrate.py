"""Apply Alembic migrations programmatically (API start-up, ``nst db upgrade``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_head(engine: Engine | None = None) -> None:
    """Bring the schema to the newest revision, on ``engine`` or on the configured database."""
    config = alembic_config()
    if engine is None:
        command.upgrade(config, "head")
        return
    # Not engine.begin(): Alembic then owns the transaction and commits it before the migrations
    # turn SQLite's foreign keys back on (migrations/env.py), which SQLite allows only outside one.
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
