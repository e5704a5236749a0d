"""The TypeScript SDK (sdk/typescript) against the tier's real server: `npm test` (node's test runner
through tsx) with OZWELL_BASE_URL and OZWELL_API_KEY pointing at the server, after `tsc --noEmit`
(strict). .ci/run installs and builds the package (npm ci, npm run build); without its node_modules
these tests skip, saying so."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.sdk.conftest import TYPESCRIPT_SDK, sdk_env

pytestmark = pytest.mark.sdk


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed")
    if not (TYPESCRIPT_SDK / "node_modules").is_dir() or not (TYPESCRIPT_SDK / "dist" / "index.cjs").is_file():
        pytest.skip("the TypeScript SDK is not installed and built: cd sdk/typescript && npm ci && npm run build")
    return npm


def test_typescript_sdk_typechecks():
    done = subprocess.run([_npm(), "run", "--silent", "typecheck"], cwd=TYPESCRIPT_SDK, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_typescript_sdk_suite(sdk_server):
    done = subprocess.run([_npm(), "test"], cwd=TYPESCRIPT_SDK, env=sdk_env(sdk_server), capture_output=True,
                          text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    counts = {name: int(value) for name, value in re.findall(r"ℹ (pass|fail|skipped|cancelled) (\d+)", output)}
    assert counts.get("pass", 0) >= 20 and counts.get("fail") == 0 and counts.get("skipped") == 0, output[-4000:]
