"""The dashboard tier (issue #19): a real `ozwell serve` on a tiny random-weight Llama, driven by Debian's
Chromium through Playwright. One server and one browser per module; screenshots go to tests/artifacts/dashboard/
(git-ignored). The tier skips, saying why, where Playwright or /usr/bin/chromium is missing (.ci/run installs both).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.process import ROOT, ServerProcess
from tests.tiny_models import minilm_config, tiny_llama_configs

MODEL = "dash-llama"
EMBEDDING = "dash-minilm"  # the Vector stores page's stores embed with it
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts" / "dashboard"
DESKTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}



def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the dashboard tier needs Playwright (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return ("the dashboard tier needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; "
                ".ci/run does)")
    return None


def pytest_collection_modifyitems(config, items):
    why = _missing()
    if why is None:
        return
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def dash_config_dir(tmp_path_factory) -> Path:
    config_dir = tiny_llama_configs(tmp_path_factory.mktemp("dashboard"), MODEL, max_model_len=256,
                                    aliases=f"[{MODEL}-alias]")
    (config_dir / f"{EMBEDDING}.yaml").write_text(minilm_config(EMBEDDING))
    return config_dir


def start_server(config_dir: Path, data_dir: Path, *args: str) -> ServerProcess:
    return ServerProcess(config_dir, data_dir, *args).start()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(page, server: ServerProcess, key: str | None = None) -> None:
    page.goto(server.url + "/dashboard/signin")
    page.get_by_label("Admin API key").fill(key or server.key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/dashboard/keys$"))


def session_cookie(context) -> dict:
    return next(c for c in context.cookies() if c["name"] == "ozwell_dashboard")


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
