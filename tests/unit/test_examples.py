"""Every shipped example config loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunconnector.config import Config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads(path: Path) -> None:
    cfg = Config.from_toml(path)
    assert cfg.tunnel or cfg.bond or cfg.api
