"""Server settings; the CLI fills them, tests build them directly."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from server.auth.plans import DEFAULT_PLANS_FILE


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    config_dir: Path = Path("model_configs")
    data_dir: Path = Path(".ozwell")
    database_url: str | None = None  # default: SQLite in the data dir
    database_pool_size: int = Field(default=5, ge=1)  # PostgreSQL: connections kept open per replica
    database_max_overflow: int = Field(default=10, ge=0)  # and how many more it may open under load
    # Shared rate limits for several replicas (default: in this process's memory).
    redis_url: str | None = None
    # Where file bytes live (default: <data-dir>/files); replicas share one, e.g. a mounted volume.
    files_dir: Path | None = None
    # This replica's name in /metrics and in its upload temporaries (default: hostname:port).
    instance_id: str | None = None
    plans_file: Path = DEFAULT_PLANS_FILE
    auth: bool = True
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    owner_quota_bytes: int = Field(default=10 * 1024 * 1024 * 1024, ge=1)
    sweep_interval_s: float = Field(default=60.0, gt=0)  # expired files and old responses
    # stored responses and chat completions are kept this long
    response_retention_s: float = Field(default=30 * 24 * 3600, gt=0)
    # Request limits: a JSON body (uploads have max_upload_bytes), and headers (count, one, all).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_header_count: int = Field(default=100, ge=8)
    max_header_bytes: int = Field(default=8 * 1024, ge=256)
    max_headers_total_bytes: int = Field(default=32 * 1024, ge=1024)
    # Owner-level limits: requests and tokens per minute for all of an owner's keys together (None: off).
    # Without them, an owner's admin key can mint keys that each get the full per-key limits.
    owner_rpm: int | None = Field(default=None, ge=1)
    owner_tpm: int | None = Field(default=None, ge=1)
    # What a request without max_tokens reserves of its key's tokens per minute for each choice, beside its
    # prompt (capped by the context it has left). It is charged what it really used when it ends.
    completion_reserve_tokens: int = Field(default=256, ge=1)
    # A request's head must arrive within this many seconds of its first byte (408 after); its body may
    # go this long without a byte (408 after).
    header_timeout_s: float = Field(default=15.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    # On SIGTERM: how long in-flight requests may run on before they are cut.
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # The dashboard (/dashboard): how long a sign-in lasts, and failed sign-ins allowed per client address a minute.
    dashboard_session_ttl_s: float = Field(default=8 * 3600, gt=0)
    dashboard_signin_attempts: int = Field(default=10, ge=1)
    # The Batch API (server/services/batch_runner.py): lines run at once per replica, and how long a replica's
    # claim on a batch lasts without renewal (another replica takes over a dead one's batch after it).
    batch_concurrency: int = Field(default=16, ge=1, le=1024)
    batch_lease_s: float = Field(default=30.0, ge=1)
    # Memory as a budget (README: memory): the KV caches in host memory in all (default: 10% of the host's memory,
    # at most 4 GiB), what loaded models may hold in host memory in all (default: no bound), and whether models
    # load on their first request rather than at start (a config's `load` overrides it).
    kv_cache_gib: float | None = Field(default=None, gt=0)
    memory_gib: float | None = Field(default=None, gt=0)
    lazy: bool = False
    # Images in prompts (server/images.py): the encoded bytes of one image, the images of one request, and whether
    # http(s) image URLs are fetched (off: the server fetches nothing, air-gapped by design).
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_images_per_request: int = Field(default=16, ge=1)
    allow_image_urls: bool = False

    @property
    def scaled_out(self) -> bool:
        """Shared stores (PostgreSQL, Redis): one of several replicas."""
        return self.redis_url is not None or not (self.database_url or "sqlite").startswith("sqlite")

    @property
    def instance(self) -> str | None:
        """This replica's name: --instance-id, else hostname:port when the stores are shared, else None (one
        server alone: /metrics unlabelled, as before)."""
        import socket

        if self.instance_id:
            return self.instance_id
        return f"{socket.gethostname()}:{self.port}" if self.scaled_out else None

    @model_validator(mode="after")
    def _no_auth_only_on_loopback(self) -> Settings:
        if not self.auth and not is_loopback(self.host):
            raise ValueError(f"--no-auth is only allowed when bound to a loopback address, not {self.host!r}")
        return self
