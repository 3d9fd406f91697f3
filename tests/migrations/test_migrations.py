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


def _migrate(engine, direction: str, revision: str) -> None:
    from alembic import command

    from service.core.migrate import alembic_config

    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)


def _counts(engine) -> dict[str, int]:
    tables = ("datasets", "items", "teachers", "jobs", "shards", "labels", "item_errors")
    with engine.connect() as connection:
        return {t: connection.scalar(sa.text(f"SELECT count(*) FROM {t}")) for t in tables}


def _fill(engine) -> None:
    """A row in each table a job touches, as of revision 0008 (and every one after it)."""
    now = "CURRENT_TIMESTAMP"
    statements = [
        "INSERT INTO datasets (id, name, kind, modality, source_path, source_format, item_count, "
        f"created_at) VALUES (1, 'pool', 'unlabeled', 'image', '/x', 'folder', 2, {now})",
        "INSERT INTO items (id, dataset_id, ordinal, uri) VALUES (1, 1, 0, 'a'), (2, 1, 1, 'b')",
        "INSERT INTO teachers (id, name, architecture, class_names, image_size, channels, mean, std, "
        "interpolation, crop_pct, model_kwargs, generation, metrics, status, file_path, size_bytes, "
        f"created_at) VALUES ('t', 't', 'resnet18', '[\"a\", \"b\"]', 28, 1, '[0]', '[1]', 'bilinear', "
        f"1.0, '{{}}', 0, '{{}}', 'ready', '/f', 1, {now})",
        "INSERT INTO jobs (id, teacher_id, dataset_id, batch_size, temperature, top_k, "
        "full_distribution_max, shard_size, num_classes, items_total, shards_total, created_at) "
        f"VALUES (1, 't', 1, 8, 1.0, 2, 2, 2, 2, 2, 1, {now})",
        'INSERT INTO shards (id, job_id, "index", start_ordinal, end_ordinal, state, items_done, '
        "items_failed, attempts) VALUES (1, 1, 0, 0, 2, 'succeeded', 1, 1, 1)",
        "INSERT INTO labels (job_id, item_id, predicted, confidence, entropy, probs) "
        "VALUES (1, 1, 0, 0.9, 0.1, :probs)",
        "INSERT INTO item_errors (job_id, item_id, message, kind) VALUES (1, 2, 'bad', 'permanent')",
    ]
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement), {"probs": b"\0\0\0\0"} if ":probs" in statement else {})


def test_upgrades_and_downgrades_keep_the_rows_of_a_database_in_use(engine):
    """SQLite's batch mode copies a table and drops the old one; with foreign keys on, that drop
    deleted every shard and label of the jobs table it copied (0009)."""
    _migrate(engine, "upgrade", "0008")
    _fill(engine)
    kept = {"datasets": 1, "items": 2, "teachers": 1, "jobs": 1, "shards": 1, "labels": 1, "item_errors": 1}
    assert _counts(engine) == kept

    _migrate(engine, "upgrade", "head")
    assert _counts(engine) == kept
    with engine.begin() as connection:
        assert connection.scalar(sa.text("SELECT noised_teacher FROM jobs")) in (False, 0)
        connection.execute(sa.text("UPDATE shards SET inference = 'eager,openvino'"))
    _migrate(engine, "downgrade", "0010")  # one mode a shard: its first
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT inference FROM shards")) == "eager"
    _migrate(engine, "downgrade", "0003")
    assert _counts(engine) == kept
    if engine.dialect.name == "sqlite":  # and the switch is back on for the connections after
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_nst_db_upgrade_on_a_database_from_a_newer_nst_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli
    from tests.utils.env import clear_caches

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    monkeypatch.setenv("NST_DATABASE_URL", url)
    clear_caches()
    assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    with sa.create_engine(url).begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: the database (NST_DATABASE_URL) cannot be upgraded: ")
    assert "'0099'" in result.output


def test_an_upgrade_that_fails_midway_leaves_the_database_as_it_was(engine, tmp_path):
    """Every statement of an upgrade, DDL included, is one transaction: a migration that fails
    after SQLite's batch mode copied a table leaves no copy behind (`_alembic_tmp_jobs`), the
    migration before it in the same upgrade is undone too, the schema and rows are as they were,
    and the next upgrade works."""
    import shutil

    from alembic import command
    from alembic.script import ScriptDirectory

    from service.core.migrate import MIGRATIONS_DIR, alembic_config

    upgrade_head(engine)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    _fill(engine)
    kept, tables = _counts(engine), set(sa.inspect(engine).get_table_names())
    columns = {c["name"] for c in sa.inspect(engine).get_columns("jobs")}

    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9998_works.py").write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        f"revision, down_revision, branch_labels, depends_on = '9998', {head!r}, None, None\n\n\n"
        "def upgrade():\n"
        "    op.create_table('first_step', sa.Column('id', sa.Integer(), primary_key=True))\n"
    )
    (scripts / "versions" / "9999_fails.py").write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        "revision, down_revision, branch_labels, depends_on = '9999', '9998', None, None\n\n\n"
        "def upgrade():\n"
        "    with op.batch_alter_table('jobs') as batch:\n"
        "        batch.add_column(sa.Column('extra', sa.Integer(), nullable=True))\n"
        "    op.create_table('more', sa.Column('id', sa.Integer(), primary_key=True))\n"
        "    raise RuntimeError('disk full')\n"
    )
    config = alembic_config()
    config.set_main_option("script_location", str(scripts))
    with engine.connect() as connection, pytest.raises(RuntimeError, match="disk full"):
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    assert set(sa.inspect(engine).get_table_names()) == tables
    assert {c["name"] for c in sa.inspect(engine).get_columns("jobs")} == columns
    assert _counts(engine) == kept
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head
    upgrade_head(engine)
    assert _counts(engine) == kept


def _upgrade_in_a_process(url: str) -> None:
    from nst.config import get_settings

    get_settings.cache_clear()
    engine = make_engine(url)
    try:
        upgrade_head(engine)
    finally:
        engine.dispose()


def test_processes_that_start_together_migrate_once(engine):
    """API replicas (or `nst api --workers N`) each apply the migrations as they start: on a new
    database they must not all create the tables, and none may fail for it."""
    import multiprocessing

    url = engine.url.render_as_string(hide_password=False)
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(4) as pool:
        pool.map(_upgrade_in_a_process, [url] * 4)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
