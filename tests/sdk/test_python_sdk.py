"""The Python SDK (sdk/python) against the tier's real server: its own suite, run in a subprocess with
OZWELL_BASE_URL and OZWELL_API_KEY pointing at the server, and mypy --strict on the package."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.sdk.conftest import PYTHON_SDK, sdk_env

pytestmark = pytest.mark.sdk


def test_python_sdk_suite(sdk_server):
    if importlib.util.find_spec("ozwell") is None:
        pytest.skip("the Python SDK is not installed: pip install -e sdk/python (.ci/run does)")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=PYTHON_SDK,
                          env=sdk_env(sdk_server), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout and " failed" not in done.stdout, done.stdout


def test_python_sdk_types_strict():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (the test extra brings it)")
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "src/ozwell"], cwd=PYTHON_SDK,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
