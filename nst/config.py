"""The one settings object, read by the API, the workers, Alembic and the CLI.

Every value comes from an ``NST_``-prefixed environment variable (or a ``.env`` file). A bad value
fails at start with a message that names the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class SettingsError(RuntimeError):
    """A setting has a bad value; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NST_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".nst")
    database_url: str = ""
    broker_url: str = ""
    # Comma-separated folders; datasets and teacher files must lie under one of them.
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    artifact_dir: Path | None = None
    api_token: SecretStr | None = None

    # Celery: a shard must finish well inside the visibility timeout, or Redis redelivers it.
    visibility_timeout_s: int = Field(3600, ge=1)
    task_max_retries: int = Field(5, ge=0, le=100)
    worker_device: Literal["auto", "cpu", "cuda"] = "auto"
    decode_workers: int = Field(2, ge=0, le=64)
    # Shard messages a worker process holds: the one it labels and the next, so the hand-off
    # between shards skips a broker round trip (about 50 ms a shard on the embedded broker,
    # bench/label_throughput.py). 1 holds no spare message, for very long shards across many workers.
    worker_prefetch: int = Field(2, ge=1, le=16)
    # Labels commit in transactions of this many rows, or at least this often: small commits
    # made the database the bottleneck (bench/label_write_rate.py); a crash loses at most one.
    commit_rows: int = Field(1024, ge=1)
    commit_seconds: float = Field(1.0, ge=0)

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_roots")
    @classmethod
    def _roots_exist(cls, roots: list[Path]) -> list[Path]:
        resolved = []
        for root in roots:
            root = root.expanduser()
            if not root.is_dir():
                raise ValueError(f"data root {str(root)!r} is not an existing folder")
            resolved.append(root.resolve())
        return resolved

    @field_validator("database_url", "broker_url")
    @classmethod
    def _parse_url(cls, value: str) -> str:
        if value:
            try:
                make_url(value)
            except ArgumentError as exc:
                raise ValueError(f"{value!r} is not a URL ({exc})") from None
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'nst.db'}"
        if not self.broker_url:
            # kombu's SQLAlchemy transport: a real broker on a SQLite file, no server needed.
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        self.artifact_dir = self.artifact_dir.expanduser().resolve()
        if not self.data_roots:
            self.data_roots = [self.data_dir / "datasets"]
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.artifact_dir, *self.data_roots):
            path.mkdir(parents=True, exist_ok=True)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = "NST_" + "_".join(str(p) for p in item["loc"][:1]).upper()
        parts.append(f"{key}: {item['msg']}")
    return "; ".join(parts)


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(f"bad setting: {_describe(exc)}") from None
