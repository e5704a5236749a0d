"""Dockerfile.cuda: hadolint finds nothing, and the file agrees with pyproject and the CLI.

There is no Docker engine on the CI machines, so the image is never built there; these checks keep
it from drifting (an extra renamed in pyproject, a package directory not copied, a health check on a
port the server does not listen on).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.cuda"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _args(name: str) -> list[str]:
    return [rest for word, rest in _instructions() if word == name]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_installs_a_vllm_within_the_extra_and_extras_that_exist():
    from packaging.requirements import Requirement

    (version,) = [args.split("=", 1)[1] for args in _args("ARG") if args.startswith("VLLM_VERSION=")]
    (extra,) = [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["vllm"]]
    assert extra.name == "vllm" and extra.specifier.contains(version), (str(extra), version)
    runs = _args("RUN")
    assert any('"vllm==${VLLM_VERSION}"' in run for run in runs)
    # The project goes in beside vLLM, with extras that pyproject defines.
    (beside,) = [shlex.split(run.split("&&")[0]) for run in runs if "install-beside-vllm" in run]
    assert beside[:2] == [".ci/install-beside-vllm", "python3"]
    assert (ROOT / beside[0]).is_file()
    extras = set(_pyproject()["project"]["optional-dependencies"])
    assert beside[2:] and set(beside[2:]) <= extras
    assert any(args.split()[0] == ".ci/install-beside-vllm" for args in _args("COPY"))


def test_copies_every_package_pyproject_builds():
    includes = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {shlex.split(args)[0] for args in _args("COPY")}
    for pattern in includes:
        package = pattern.rstrip("*")
        assert (ROOT / package).is_dir()
        assert package in copied, f"package {package} is built by pyproject but not copied into the image"
    assert {"pyproject.toml", "README.md"} <= set(shlex.split(" ".join(_args("COPY"))))


def test_runs_offline_as_a_numeric_non_root_user_with_volumes():
    env = " ".join(_args("ENV"))
    assert "HF_HUB_OFFLINE=1" in env
    users = _args("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit()
    volumes = " ".join(_args("VOLUME"))
    assert "/data" in volumes and "/models" in volumes
    assert _args("FROM")[0].startswith("nvidia/cuda:") and "runtime" in _args("FROM")[0]


def test_healthcheck_asks_health_on_the_port_the_server_binds():
    cmd = shlex.split(_args("CMD")[-1].replace('", "', " ").strip('[]"'))
    assert cmd[:2] == ["ozwell", "serve"]
    port = cmd[cmd.index("--port") + 1]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "--data-dir" in cmd and cmd[cmd.index("--data-dir") + 1] == "/data"
    (healthcheck,) = _args("HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/health" in healthcheck
    assert str(port) in " ".join(_args("EXPOSE"))


def test_serve_accepts_the_image_command_line():
    """The CMD's flags are ones `ozwell serve` knows (argparse would exit 2 on an unknown one)."""
    from server.cli import _parser

    cmd = shlex.split(_args("CMD")[-1].replace('", "', " ").strip('[]"'))
    args = _parser().parse_args(cmd[1:])
    assert args.command == "serve" and args.port == 8000 and str(args.data_dir) == "/data"
