"""The `ozwell` command: serve the configured models, or list them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from server.settings import Settings


def _offline() -> None:
    # Nothing may reach a model hub at run time.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ozwell", description="Ozwell: an OpenAI-compatible inference server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="load the configured models and serve the OpenAI API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--config-dir", type=Path, default=Path("model_configs"))
    serve.add_argument("--data-dir", type=Path, default=Path(".ozwell"))
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    models = sub.add_parser("models", help="list the models the configs define")
    models.add_argument("--config-dir", type=Path, default=Path("model_configs"))
    return parser


def _list_models(config_dir: Path) -> int:
    from engines.config import load_model_configs

    for config in load_model_configs(config_dir):
        aliases = ", ".join(config.aliases) or "-"
        print(f"{config.id}\t{config.task.value}\t{config.engine.value}\taliases: {aliases}\tsource: {config.source}")
    return 0


def _serve(settings: Settings, log_level: str) -> int:
    import uvicorn

    from engines.config import load_model_configs
    from engines.registry import EngineRegistry
    from server.app import create_app

    configs = load_model_configs(settings.config_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = EngineRegistry.from_configs(configs, settings.data_dir, progress=lambda m: print(m, flush=True))
    app = create_app(settings, registry)

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else settings.port
                print(f"Ozwell ready on http://{settings.host}:{port}/v1 "
                      f"(models: {', '.join(registry.names())})", flush=True)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            access_log=log_level == "debug")
    _Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _offline()
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engines.config import ConfigError

    try:
        if args.command == "models":
            return _list_models(args.config_dir)
        settings = Settings(host=args.host, port=args.port, config_dir=args.config_dir, data_dir=args.data_dir)
        return _serve(settings, args.log_level)
    except ConfigError as exc:
        print(f"ozwell: bad model config: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
