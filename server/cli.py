"""The `ozwell` command: serve the configured models, or list them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from server.cli_models import add_models_parser, models_command
from server.settings import Settings


def _offline() -> None:
    # Nothing may reach a model hub at run time.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# `ozwell serve`'s limits: flag, type, default, what it bounds.
_SERVE_LIMITS = [
    ("--max-upload-mb", int, 512, "per-file upload cap in MB"),
    ("--owner-quota-mb", int, 10240, "file storage per owner in MB"),
    ("--response-retention-days", float, 30.0, "how long stored responses and chat completions are kept"),
    ("--max-body-mb", float, 8.0, "largest JSON request body in MB, refused with 413 before parsing"),
    ("--owner-rpm", int, None, "requests per minute for all of an owner's keys together"),
    ("--owner-tpm", int, None, "tokens per minute for all of an owner's keys together"),
    ("--completion-reserve", int, 256, "tokens a request without max_tokens reserves per choice, beside its prompt"),
    ("--header-timeout", float, 15.0, "seconds a request's headers may take to arrive, from their first byte"),
    ("--body-timeout", float, 60.0, "seconds a request body may go without a byte before a 408"),
    ("--drain-timeout", float, 30.0, "on SIGTERM, seconds in-flight requests may run on before they are cut"),
    ("--dashboard-session-ttl", float, 28800.0, "seconds a dashboard sign-in lasts"),
    ("--dashboard-signin-attempts", int, 10, "failed dashboard sign-ins allowed per client address a minute"),
    ("--batch-concurrency", int, 16, "batch lines (the Batch API) each replica runs at once"),
    ("--batch-lease", float, 30.0, "seconds a replica's claim on a batch lasts unrenewed (a dead one's is taken over)"),
    ("--max-image-mb", float, 20.0, "largest image in a prompt in MB, its encoded bytes"),
    ("--max-images-per-request", int, 16, "images one request's prompt may hold"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ozwell", description="Ozwell: an OpenAI-compatible inference server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="load the configured models and serve the OpenAI API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--config-dir", type=Path, default=Path("model_configs"))
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--no-auth", action="store_true", help="serve without API keys (loopback binds only)")
    serve.add_argument("--plans-file", type=Path, default=None, help="YAML of plan limits (default: built in)")
    for flag, kind, default, text in _SERVE_LIMITS:
        serve.add_argument(flag, type=kind, default=default, help=f"{text} (default {default or 'none'})")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="also serve /metrics without a key on this port (default: only /metrics for operator keys)")
    serve.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    _add_store_args(serve)
    serve.add_argument("--db-pool-size", type=int, default=5,
                       help="PostgreSQL connections each replica keeps open (default 5)")
    serve.add_argument("--db-max-overflow", type=int, default=10,
                       help="PostgreSQL connections a replica may open beyond the pool under load (default 10)")
    serve.add_argument("--redis-url", default=None,
                       help="share the rate limits of several replicas in Redis, e.g. redis://redis:6379/0 "
                            "(default: in this process; if Redis is unreachable, requests get 503)")
    serve.add_argument("--files-dir", type=Path, default=None,
                       help="where uploaded files' bytes live (default: <data-dir>/files); "
                            "replicas share one directory, e.g. a mounted volume")
    serve.add_argument("--forwarded-allow-ips", default=None,
                       help="comma-separated addresses or networks of the reverse proxies whose X-Forwarded-For and "
                            "X-Forwarded-Proto are believed, or '*' (default: none; clients are who they connect as)")
    serve.add_argument("--instance-id", default=None,
                       help="this replica's name in /metrics and /ready (default: hostname:port)")
    serve.add_argument("--lazy", action="store_true",
                       help="load each model on its first request, not at start (a config's `load` overrides it)")
    serve.add_argument("--kv-cache-gib", type=float, default=None,
                       help="GiB of host memory for the KV caches of all models together, split between them "
                            "(default: 10%% of this host's memory, at most 4)")
    serve.add_argument("--memory-gib", type=float, default=None,
                       help="GiB of host memory the loaded models may hold in all, weights and KV caches; a load "
                            "that would pass it unloads the least recently used idle model first (default: no bound)")
    serve.add_argument("--allow-image-urls", action="store_true",
                       help="fetch http(s) image URLs in prompts (size-capped by --max-image-mb, 10 s each); "
                            "default: refused with a 400, the server fetches nothing")
    add_models_parser(sub)

    keys = sub.add_parser("keys", help="create, list and revoke API keys (works on the database directly)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key; it is printed once, alone on the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--owner", default=None, help="who the key belongs to (default: its name)")
    create.add_argument("--plan", default="free", help="free, pro or enterprise (see the plans file)")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute (overrides the plan)")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute (overrides the plan)")
    create.add_argument("--scopes", nargs="+", default=None, help="default: every API scope but admin")
    create.add_argument("--models", nargs="+", default=None, help="models the key may use (default: all)")
    create.add_argument("--admin", action="store_true", help="add the admin scope (its owner's keys and usage)")
    create.add_argument("--operator", action="store_true",
                        help="add the operator scope (server-wide /metrics and /ready's reasons)")
    create.add_argument("--plans-file", type=Path, default=None)
    _add_store_args(create)
    listing = keys_sub.add_parser("list", help="list keys (no secrets)")
    _add_store_args(listing)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or visible prefix")
    revoke.add_argument("key")
    _add_store_args(revoke)
    batches = sub.add_parser("batches", help="list, show and cancel batches (works on the database directly)")
    batches_sub = batches.add_subparsers(dest="batches_command", required=True)
    batch_list = batches_sub.add_parser("list", help="the newest batches, everyone's or one owner's")
    batch_list.add_argument("--owner", default=None)
    batch_list.add_argument("--limit", type=int, default=50)
    _add_store_args(batch_list)
    for name, text in (("show", "one batch, as the API returns it (JSON)"),
                       ("cancel", "cancel a batch; the server running it stops its lines and writes what finished")):
        command = batches_sub.add_parser(name, help=text)
        command.add_argument("batch_id")
        _add_store_args(command)
    usage = sub.add_parser("usage", help="read usage records")
    usage.add_argument("--key", default=None, help="key id or visible prefix")
    usage.add_argument("--since", default=None, help="ISO date or datetime, e.g. 2026-11-25 or 2026-11-25T10:00")
    usage.add_argument("--limit", type=int, default=100)
    _add_store_args(usage)
    return parser


def _add_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path(".ozwell"))
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL: sqlite:///... or, for several replicas, "
                        "postgresql+psycopg://user:password@host/db (default: SQLite in the data dir)")


def _key_service(args):
    from server.auth.keys import KeyService
    from server.auth.plans import DEFAULT_PLANS_FILE, Plans
    from server.db.database import open_database

    database = open_database(args.database_url, args.data_dir)
    return KeyService(database, Plans.from_file(getattr(args, "plans_file", None) or DEFAULT_PLANS_FILE))


def _first_run_admin_key(keys, data_dir: Path) -> None:
    """With an empty key store, make one admin key, print it once, and keep it in a 0600 file."""
    if keys.count_active():
        return
    record, plaintext = keys.create(name="admin", owner="admin", plan="enterprise", rpm=10_000, tpm=100_000_000,
                                    admin=True, operator=True)
    path = data_dir / "admin_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(plaintext + "\n")
    os.chmod(path, 0o600)
    print(f"No API keys yet: created admin key {record.id} (also written to {path}, mode 0600). "
          "It is shown only this once:", flush=True)
    print(plaintext, flush=True)


def _freeze_startup_heap() -> None:
    """Move what startup made (the models, tokenizers and vocabularies) out of the garbage collector's sight, as
    vLLM's engine does: a full collection while serving then walks only what serving made. One that walks the
    startup heap takes 0.2-0.5 s on a 2-core CPU serving gemma-3-270m, a stall of every stream in flight."""
    import gc

    gc.collect()
    gc.freeze()


def _serve(settings: Settings, log_level: str, database_url: str | None, metrics_port: int | None = None,
           metrics_host: str = "127.0.0.1", forwarded_allow_ips: str | None = None) -> int:
    import asyncio
    import signal

    import uvicorn

    from engines.config import load_model_configs
    from engines.registry import EngineRegistry
    from server.app import create_app
    from server.auth.keys import KeyService
    from server.auth.plans import Plans
    from server.db.database import open_database

    configs = load_model_configs(settings.config_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(database_url, settings.data_dir, settings.database_pool_size,
                             settings.database_max_overflow)
    if settings.auth:
        with database.exclusive():  # replicas starting at once on one database make one admin key
            _first_run_admin_key(KeyService(database, Plans.from_file(settings.plans_file)), settings.data_dir)
    else:
        print("WARNING: serving WITHOUT authentication (--no-auth, loopback only)", flush=True)
    registry = EngineRegistry.from_configs(configs, settings.data_dir, progress=lambda m: print(m, flush=True),
                                           lazy=settings.lazy, kv_cache_gib=settings.kv_cache_gib,
                                           memory_gib=settings.memory_gib)
    app = create_app(settings, registry, database=database)

    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=app.state.services.metrics.registry)
        print(f"Metrics on http://{metrics_host}:{metrics_port}/metrics", flush=True)

    class _Server(uvicorn.Server):
        """uvicorn, with a graceful drain on the first SIGTERM or Ctrl-C (server/lifecycle.py); a second forces."""

        _loop: asyncio.AbstractEventLoop | None = None
        _drain: asyncio.Task | None = None

        async def startup(self, sockets=None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else settings.port
                _freeze_startup_heap()
                print(f"Ozwell ready on http://{settings.host}:{port}/v1 "
                      f"(models: {', '.join(registry.names())})", flush=True)

        def handle_exit(self, sig, frame) -> None:
            if self._loop is None or not self.started:
                return super().handle_exit(sig, frame)
            if self._drain is None and not self.should_exit:
                print(f"Received {signal.Signals(sig).name}: draining (up to {settings.drain_timeout_s:.0f}s)",
                      flush=True)
                self._loop.call_soon_threadsafe(self._start_drain)
            else:  # a second signal: stop now
                self.should_exit = self.force_exit = True

        def _start_drain(self) -> None:
            self._drain = self._loop.create_task(self._drain_then_exit())

        async def _drain_then_exit(self) -> None:
            try:
                await app.state.services.lifecycle.drain(settings.drain_timeout_s)
            finally:
                self.should_exit = True

    from server.http_protocol import GuardedHttpProtocol

    # The request line and the headers together: the header limit plus room for a long URL.
    http = GuardedHttpProtocol.with_limits(settings.max_headers_total_bytes + 16 * 1024, settings.header_timeout_s)
    # Proxy headers only from the proxies named: uvicorn's own default believes X-Forwarded-For from 127.0.0.1
    # (and $FORWARDED_ALLOW_IPS), so any local client could pick its address, e.g. to dodge the sign-in limit.
    proxies = (forwarded_allow_ips or "").strip()
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            access_log=log_level == "debug", timeout_graceful_shutdown=5, http=http,
                            proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)
    _Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _offline()
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from pydantic import ValidationError

    from engines.config import ConfigError
    from server.auth.keys import KeyAdminError

    try:
        if args.command == "models":
            return models_command(args)
        if args.command == "keys":
            return _keys_command(args)
        if args.command == "usage":
            return _usage_command(args)
        if args.command == "batches":
            return _batches_command(args)
        extra = {"plans_file": args.plans_file} if args.plans_file else {}
        settings = Settings(host=args.host, port=args.port, config_dir=args.config_dir, data_dir=args.data_dir,
                            database_url=args.database_url, auth=not args.no_auth,
                            max_upload_bytes=args.max_upload_mb * 1024 * 1024,
                            owner_quota_bytes=args.owner_quota_mb * 1024 * 1024,
                            response_retention_s=args.response_retention_days * 86400,
                            max_body_bytes=int(args.max_body_mb * 1024 * 1024), drain_timeout_s=args.drain_timeout,
                            header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                            owner_rpm=args.owner_rpm, owner_tpm=args.owner_tpm,
                            completion_reserve_tokens=args.completion_reserve,
                            dashboard_session_ttl_s=args.dashboard_session_ttl,
                            dashboard_signin_attempts=args.dashboard_signin_attempts,
                            database_pool_size=args.db_pool_size, database_max_overflow=args.db_max_overflow,
                            redis_url=args.redis_url, files_dir=args.files_dir, instance_id=args.instance_id,
                            batch_concurrency=args.batch_concurrency, batch_lease_s=args.batch_lease,
                            kv_cache_gib=args.kv_cache_gib, memory_gib=args.memory_gib, lazy=args.lazy,
                            max_image_bytes=int(args.max_image_mb * 1024 * 1024),
                            max_images_per_request=args.max_images_per_request,
                            allow_image_urls=args.allow_image_urls, **extra)
        return _serve(settings, args.log_level, args.database_url, args.metrics_port, args.metrics_host,
                      args.forwarded_allow_ips)
    except ConfigError as exc:
        print(f"ozwell: bad model config: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"ozwell: {exc.errors()[0]['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except KeyAdminError as exc:
        print(f"ozwell: {exc}", file=sys.stderr)
        return 2


def _keys_command(args) -> int:
    keys = _key_service(args)
    if args.keys_command == "create":
        record, plaintext = keys.create(name=args.name, owner=args.owner, plan=args.plan, rpm=args.rpm,
                                        tpm=args.tpm, scopes=args.scopes, models=args.models, admin=args.admin,
                                        operator=args.operator)
        print(f"created {record.id} ({record.prefix}..., plan {record.plan}, scopes {' '.join(record.scopes)})")
        print("The key is shown only this once:")
        print(plaintext)
        return 0
    if args.keys_command == "list":
        print("id\tprefix\tname\towner\tplan\trpm\ttpm\tscopes\tmodels\tcreated\tlast_used\trevoked")
        for k in keys.list():
            print("\t".join(str(v) for v in (
                k.id, k.prefix + "...", k.name, k.owner, k.plan, k.rpm or "-", k.tpm or "-", ",".join(k.scopes),
                ",".join(k.models) if k.models else "*", _when(k.created_at), _when(k.last_used_at),
                _when(k.revoked_at))))
        return 0
    record = keys.revoke(args.key)
    if record is None:
        print(f"ozwell: no key matches {args.key!r}", file=sys.stderr)
        return 1
    print(f"revoked {record.id} ({record.prefix}...)")
    return 0


def _batches_command(args) -> int:
    import json

    from server.errors import OpenAIError
    from server.services.batches import BatchService

    batches = BatchService(_key_service(args).database, files=None)
    try:
        if args.batches_command == "list":
            print("id\towner\tstatus\tendpoint\tmodel\tcompleted/failed/total\tcreated")
            for b in batches.rows(args.owner, args.limit):
                print("\t".join(str(v) for v in (
                    b.id, b.owner, b.status, b.endpoint, b.model or "-", f"{b.completed}/{b.failed}/{b.total}",
                    _epoch(b.created_at))))
            return 0
        body = batches.retrieve(None, args.batch_id) if args.batches_command == "show" else \
            batches.cancel(None, args.batch_id)
    except OpenAIError as exc:
        print(f"ozwell: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _epoch(seconds: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _when(value) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S") if value else "-"


def _usage_command(args) -> int:
    from datetime import UTC, datetime

    from server.services.usage import UsageService

    keys = _key_service(args)
    key_id = None
    if args.key:
        matches = [k for k in keys.list() if k.id == args.key or k.prefix.startswith(args.key)]
        if len(matches) != 1:
            print(f"ozwell: {args.key!r} matches {len(matches)} keys", file=sys.stderr)
            return 1
        key_id = matches[0].id
    since = datetime.fromisoformat(args.since).replace(tzinfo=UTC) if args.since else None
    rows = UsageService(keys.database).query(key_id, since, args.limit)
    print("time\tkey\tmodel\tendpoint\tstatus\tprompt_tokens\tcompletion_tokens\tlatency_ms")
    for r in rows:
        print("\t".join(str(v) for v in (
            datetime.fromtimestamp(r["created_at"], UTC).strftime("%Y-%m-%dT%H:%M:%S"), r["key_id"],
            r["model"] or "-", r["endpoint"], r["status"], r["prompt_tokens"], r["completion_tokens"],
            r["latency_ms"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
