"""The SDK's tests run against a real `ozwell serve`: OZWELL_BASE_URL and OZWELL_API_KEY (an admin key)
say where. The repository's tests/sdk tier starts one on tiny models and runs this suite against it.
OZWELL_TEST_CHAT_MODEL (default gpt-4), OZWELL_TEST_LONG_MODEL (a chat model with a long context) and
OZWELL_TEST_EMBEDDING_MODEL (default text-embedding-3-small) name the models."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from ozwell import Ozwell


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("OZWELL_BASE_URL") and os.environ.get("OZWELL_API_KEY"):
        return
    skip = pytest.mark.skip(reason="set OZWELL_BASE_URL and OZWELL_API_KEY (an admin key) to a running ozwell serve")
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server() -> str:
    return os.environ["OZWELL_BASE_URL"]


@pytest.fixture(scope="session")
def chat_model() -> str:
    return os.environ.get("OZWELL_TEST_CHAT_MODEL", "gpt-4")


@pytest.fixture(scope="session")
def long_model(chat_model: str) -> str:
    return os.environ.get("OZWELL_TEST_LONG_MODEL", chat_model)


@pytest.fixture(scope="session")
def embedding_model() -> str:
    return os.environ.get("OZWELL_TEST_EMBEDDING_MODEL", "text-embedding-3-small")


@pytest.fixture(scope="session")
def client(server: str) -> Iterator[Ozwell]:
    with Ozwell() as ozwell:
        yield ozwell
