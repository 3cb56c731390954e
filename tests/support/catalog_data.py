"""Catalog data for tests: the project's own fixture always; OpenRouter's real snapshots when they are beside us.

``tests/data/catalog-*.json`` hold facts of 123 real models with descriptions written for the project (rebuilt by
``tests/data/build_catalog.py``). The real snapshots live in ``../shared/data/openrouter`` (third-party data, never
committed): tests of them skip when it is absent, and fail instead when ``INSTANT402_TEST_REQUIRE_SNAPSHOTS=1`` (CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
CATALOG_ALL = DATA / "catalog-all.json"  # every kind of model, some without text output
CATALOG_TEXT = DATA / "catalog-text.json"  # the same list as OpenRouter's default (text output) listing

OPENROUTER_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "openrouter"


def openrouter_snapshot(name: str) -> Path:
    """The path of a real OpenRouter snapshot file; skips (or fails in CI) the test when it is not there."""
    path = OPENROUTER_DATA / name
    if path.is_file():
        return path
    reason = f"OpenRouter snapshot {name} not found in {OPENROUTER_DATA} (../shared/data/openrouter)"
    if os.environ.get("INSTANT402_TEST_REQUIRE_SNAPSHOTS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
