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

from nst import storage


class SettingsError(RuntimeError):
    """A setting has a bad value; the message names the environment variable."""


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NST_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".nst")
    database_url: str = ""
    broker_url: str = ""
    # Comma-separated folders or URL prefixes (s3://bucket/prefix); datasets and teacher files
    # must lie under one of them. Uploaded checkpoints go to artifact_dir, a folder or a URL.
    data_roots: Annotated[list[Path | str], NoDecode] = Field(default_factory=list)
    artifact_dir: Path | str | None = None
    api_token: SecretStr | None = None
    # Host names the API answers to (the Host header, its port aside), comma-separated;
    # "*.example.org" for a domain's hosts, "*" for any. Unset: any with NST_API_TOKEN (the
    # token guards every call), else this machine's loopback names only: without a token a web
    # page could point its own domain at 127.0.0.1 (DNS rebinding) and call the API as its origin.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Celery: a shard must finish well inside the visibility timeout, or Redis redelivers it.
    visibility_timeout_s: int = Field(3600, ge=1)
    task_max_retries: int = Field(5, ge=0, le=100)
    # auto/cuda: pool process i takes GPU i (modulo the GPUs); cuda:N pins GPU N; cpu.
    worker_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # Decode processes per pool process; auto: its share of the cores (workers/cores.py).
    decode_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    # A validated teacher prepared for labeling on the worker that validated it (workers/tasks.py).
    prepare_teachers: bool = True
    # Shard messages a worker process holds: the one it labels and the next, so the hand-off
    # between shards skips a broker round trip (about 50 ms a shard on the embedded broker,
    # bench/label_throughput.py). 1 holds no spare message, for very long shards across many workers.
    worker_prefetch: int = Field(2, ge=1, le=16)
    # Labels commit in transactions of this many rows, or at least this often: small commits
    # made the database the bottleneck (bench/label_write_rate.py); a crash loses at most one.
    commit_rows: int = Field(1024, ge=1)
    commit_seconds: float = Field(1.0, ge=0)
    # Request bodies beyond these are a 413: JSON bodies, and teacher uploads (streamed to disk).
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_upload_bytes: int = Field(4 << 30, ge=1024)
    # Self-healing (service/lifecycle.py, workers/reaper.py): a running shard holds a lease its
    # worker renews every quarter of it; the reaper in every worker, every `reaper_interval_s`,
    # queues again a shard whose lease lapsed, or one queued `unclaimed_s` ago whose message was
    # lost (service.lifecycle._lost_messages), and fails it after `shard_max_attempts` with the reason.
    lease_s: float = Field(20.0, gt=0)
    reaper_interval_s: float = Field(5.0, gt=0)
    unclaimed_s: float = Field(30.0, gt=0)
    shard_max_attempts: int = Field(5, ge=1, le=100)
    # Each worker reports itself this often (workers/heartbeat.py); silent for three, it is lost.
    heartbeat_s: float = Field(5.0, gt=0)
    # The worker host's cache (NST_DATA_DIR/cache: fetched checkpoints, converted graphs) is
    # trimmed to this, least recently used first (workers/host_cache.py).
    worker_cache_gb: float = Field(20.0, ge=0)
    # Lifecycle events (every state change of a job or shard) as JSON lines instead of text.
    log_json: bool = False

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_roots")
    @classmethod
    def _roots_exist(cls, roots: list[Path | str]) -> list[Path | str]:
        resolved = []
        for root in roots:
            root = storage.location(str(root).strip())
            if isinstance(root, Path) and not root.is_dir():
                raise ValueError(f"data root {str(root)!r} is not an existing folder")
            resolved.append(root)
        return resolved

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            name = host.removeprefix("*.") if host != "*" else "x"
            if not name or not all(c.isalnum() or c in "-.:_" for c in name):
                raise ValueError(f"{host!r} is not a host name, '*.domain' or '*' (no scheme, port or path)")
        return hosts

    @field_validator("artifact_dir")
    @classmethod
    def _artifact_location(cls, value: Path | str | None) -> Path | str | None:
        return None if value is None else storage.location(str(value))

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
        if not self.data_roots:
            self.data_roots = [self.data_dir / "datasets"]
        if not self.allowed_hosts:
            self.allowed_hosts = ["*"] if self.api_token is not None else list(LOOPBACK_HOSTS)
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.artifact_dir, *self.data_roots):
            if isinstance(path, Path):
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
