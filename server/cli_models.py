"""`ozwell models`: list the configured models, or load, unload and reload them on a running server.

`ozwell models` (or `models list`) reads the configs in --config-dir, as before. `load ID`, `unload ID`, `reload`
and `status` talk to a running server through its admin API (POST /v1/admin/models/...), with an operator key from
--api-key or $OZWELL_API_KEY, at --url or $OZWELL_BASE_URL (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

_ACTIONS = {"load": "load a model on the running server now",
            "unload": "unload a model on the running server (its requests in flight finish first)"}


def add_models_parser(sub) -> None:
    models = sub.add_parser("models", help="list the configured models, or load/unload/reload them on a running "
                                           "server")
    models.add_argument("--config-dir", type=Path, default=Path("model_configs"))
    actions = models.add_subparsers(dest="models_command")
    actions.add_parser("list", help="the models the configs define (reads --config-dir)")
    for name, text in {**_ACTIONS, "reload": "re-read the server's config directory (new, changed and removed "
                                             "models)", "status": "each model's state on the running server"}.items():
        action = actions.add_parser(name, help=text)
        if name in _ACTIONS:
            action.add_argument("model", help="the model's id or an alias")
        action.add_argument("--url", default=os.environ.get("OZWELL_BASE_URL", "http://127.0.0.1:8000"),
                            help="the server (default $OZWELL_BASE_URL or http://127.0.0.1:8000)")
        action.add_argument("--api-key", default=None, help="an operator-scoped key (default $OZWELL_API_KEY)")


def models_command(args: argparse.Namespace) -> int:
    command = args.models_command or "list"
    if command == "list":
        return _list_models(args.config_dir)
    key = args.api_key or os.environ.get("OZWELL_API_KEY")
    base = args.url.rstrip("/").removesuffix("/v1")
    if command == "status":
        status, body = _call("GET", f"{base}/v1/admin/models", key)
    elif command == "reload":
        status, body = _call("POST", f"{base}/v1/admin/models/reload", key)
    else:
        status, body = _call("POST", f"{base}/v1/admin/models/{urllib.request.quote(args.model, safe='')}/{command}",
                             key)
    if status >= 400:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        print(f"ozwell: {status}: {message or body}", file=sys.stderr)
        return 1
    if command == "status":
        for model in body.get("data", []):
            print(f"{model['id']}\t{model['state']}\t{model.get('device', '-')}\t"
                  f"{(model.get('memory_bytes') or 0) / 2**20:.0f} MiB")
    elif command == "reload":
        print(", ".join(f"{name}: {' '.join(ids)}" for name, ids in body.get("changes", {}).items() if ids) or
              "no change")
    else:
        print(f"{body['id']}: {body['state']}")
    return 0


def _call(method: str, url: str, key: str | None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:  # a load may take minutes
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except urllib.error.URLError as exc:
        return 599, f"cannot reach {url}: {exc.reason}"


def _list_models(config_dir: Path) -> int:
    from engines.config import load_model_configs

    for config in load_model_configs(config_dir):
        aliases = ", ".join(config.aliases) or "-"
        load = config.load or "startup"
        print(f"{config.id}\t{config.task.value}\t{config.engine.value}\taliases: {aliases}\tload: {load}\t"
              f"source: {config.source}")
    return 0
