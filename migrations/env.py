"""Alembic environment: the URL comes from the one settings object (or a caller's connection)."""

from alembic import context
from alembic.util import CommandError
from sqlalchemy import pool

from nst.config import get_settings
from service.core.db import make_engine
from service.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=get_settings().database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    settings = get_settings()
    settings.ensure_dirs()
    engine = make_engine(settings.database_url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table and
    # drops the old one. With foreign keys on, that DROP TABLE deletes every row that references
    # the table through ON DELETE CASCADE (copying `jobs` emptied `shards` and `labels`): so they
    # are off while the migrations run (SQLite honours the switch only outside a transaction),
    # and checked once the copies are in place.
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _foreign_keys(connection, "OFF")
    try:
        # transactional_ddl: Alembic takes SQLite's DDL for non-transactional and commits after
        # each migration; SQLite's DDL is transactional, so the whole upgrade is one transaction.
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            transactional_ddl=True,
        )
        with context.begin_transaction():
            if sqlite:
                _begin_before_any_ddl(connection)
            else:
                _one_upgrade_at_a_time(connection)
            before = context.get_context().get_current_revision()
            context.run_migrations()
            if sqlite and context.get_context().get_current_revision() != before:
                _check_foreign_keys(connection)
    finally:
        if sqlite:
            _foreign_keys(connection, "ON")


def _foreign_keys(connection, switch: str) -> None:
    # On the driver's connection: through SQLAlchemy the PRAGMA would begin a transaction, which
    # Alembic would then take for its caller's and never commit.
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys={switch}")


_UPGRADE_WAIT_MS = 3_600_000  # how long a process waits for another's upgrade (SQLite)


def _begin_before_any_ddl(connection) -> None:
    # Python's sqlite3 (before 3.12's autocommit=False) opens a transaction only before an
    # INSERT, UPDATE or DELETE: a CREATE TABLE ahead of one (a batch migration's copy of a table)
    # was committed on its own, and a migration that failed after it left the copy behind, which
    # the next upgrade then tripped over. An explicit BEGIN makes every statement of the upgrade,
    # DDL included, one transaction that commits or rolls back whole, as on PostgreSQL.
    # IMMEDIATE takes the write lock before the current revision is read: processes that start
    # together (API replicas) upgrade one after the other, and the later ones find nothing to do.
    # They wait as long as an upgrade may take (copying a large table), not the usual 30 s.
    driver = connection.connection.driver_connection
    usual_ms = driver.execute("PRAGMA busy_timeout").fetchone()[0]
    driver.execute(f"PRAGMA busy_timeout={_UPGRADE_WAIT_MS}")
    try:
        driver.execute("BEGIN IMMEDIATE")
    finally:
        driver.execute(f"PRAGMA busy_timeout={usual_ms}")


# Any constant: the key of the transaction-scoped advisory lock that upgrades take.
_UPGRADE_LOCK = 0x6E73745F6D6967  # "nst_mig"


def _one_upgrade_at_a_time(connection) -> None:
    # Processes that start together (API replicas) would each read the revision before any
    # committed and run the same migrations: all but one failed on the tables the first created.
    # The lock holds until this upgrade commits or rolls back; the next then reads its result.
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")


def _check_foreign_keys(connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        table, _, parent, _ = broken[0]
        raise CommandError(
            f"the migrations would leave {len(broken)} row(s) whose foreign key names no row, e.g. in "
            f"{table} (referencing {parent}); they were rolled back"
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
