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


def tiny_model_config(variant="solov2", image_size=(64, 64), num_classes=3, **overrides):
    """A few-thousand-parameter SOLO for tests: tiny backbone, 3 levels, narrow heads."""
    from solo_tf.config import ModelConfig

    kw = dict(
        variant=variant,
        backbone="tiny",
        num_classes=num_classes,
        image_size=image_size,
        fpn_channels=32,
        num_grids=(12, 8, 6),
        strides=(8, 16, 32),
        scale_ranges=((1, 32), (16, 64), (32, 256)),
        head_channels=32,
        stacked_convs=2,
        mask_feature_channels=16,
        mask_channels=32,
        norm_groups=8,
    )
    kw.update(overrides)
    cfg = ModelConfig(**kw)
    cfg.validate()
    return cfg
