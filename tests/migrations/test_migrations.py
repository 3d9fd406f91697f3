"""The migrations own the schema: they apply on SQLite and PostgreSQL and match the models."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.core.db import make_engine
from service.core.migrate import upgrade_head
from service.models import Base


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_upgrade_head_creates_a_schema_equal_to_the_models(engine):
    upgrade_head(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_downgrade_removes_everything(engine):
    from alembic import command

    from service.core.migrate import alembic_config

    upgrade_head(engine)
    upgrade_head(engine)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}


def test_nst_db_upgrade_uses_the_configured_database(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli
    from tests.utils.env import clear_caches

    monkeypatch.setenv("NST_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    clear_caches()
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    tables = sa.inspect(sa.create_engine(f"sqlite:///{tmp_path / 'cli.db'}")).get_table_names()
    assert {"datasets", "items", "teachers", "jobs", "shards", "labels"} <= set(tables)


def test_the_label_bins_trigger_survives_to_head(engine):
    """A later migration that rebuilds `labels` (SQLite's batch mode copies the table) would drop
    the trigger that keeps the label bins, silently: statistics and manifests would go stale."""
    upgrade_head(engine)
    if engine.dialect.name == "postgresql":
        query = "SELECT count(*) FROM pg_trigger WHERE tgname = 'labels_binned' AND NOT tgisinternal"
    else:
        query = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'labels_binned'"
    with engine.connect() as connection:
        assert connection.execute(sa.text(query)).scalar() == 1
