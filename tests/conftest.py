import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """Golden cases: $SOLO_GOLDEN_DIR, else ../shared/golden beside the checkout."""
    env = os.environ.get("SOLO_GOLDEN_DIR")
    return Path(env) if env else REPO.parent / "shared" / "golden"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
