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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    # The suite runs on two pytest-xdist workers (pyproject: -n 2 --dist loadgroup). Tests that
    # share an expensive fixture go to one worker, so it is built once: those of a tiny trained
    # model (the session fixture below) in a group per variant ("solov2" unless the test is
    # parametrised by one), the others using a module-scoped fixture in a group per module.
    for item in items:
        if "tiny_trained" in getattr(item, "fixturenames", ()):
            callspec = getattr(item, "callspec", None)
            variant = callspec.params.get("variant", "solov2") if callspec else "solov2"
            item.add_marker(pytest.mark.xdist_group(f"tiny_trained_{variant}"))
            continue
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d and d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(Path(str(item.fspath)).name))
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
    from solo_tf.variants import check_model_config

    return check_model_config(ModelConfig(**kw))


# --- tiny models trained once per session, shared by test_overfit.py and test_export.py --------
TINY_CANVAS = (64, 64)
TINY_CLASS_NAMES = ["circle", "rectangle", "triangle", "ellipse", "star", "ring"]
TINY_CATEGORY_IDS = [11, 12, 13, 21, 22, 31]  # dataset ids, not 0..5: exported graphs report these


def train_tiny(variant, epochs=40):
    """A tiny model of ``variant`` fitted for ``2 * epochs`` steps (Adam 3e-3, batch 8) on 16
    shapes images at 64x64, with dataset category ids. Returns ``(model, history)``, the
    history being Keras's per-epoch means of ``loss``, ``focal_loss`` and ``dice_loss``.

    Its scores spread well above the decoder's thresholds, so the export parity checks run on
    real detections, not empty slots; its losses are what test_overfit checks."""
    import keras

    from solo_tf.config import DataConfig, LabelsConfig, PostprocessConfig
    from solo_tf.data.shapes import ShapesSourceConfig
    from solo_tf.data.pipeline import prepare, shapes_source
    from solo_tf.model import SOLO

    cfg = tiny_model_config(variant, image_size=TINY_CANVAS, num_classes=len(TINY_CLASS_NAMES))
    data = DataConfig(max_instances=6, flip=False, shapes=ShapesSourceConfig(
        num_train=16, image_size=TINY_CANVAS, max_objects=3, object_size=(0.3, 0.6)))
    source = shapes_source(data, "train", len(TINY_CLASS_NAMES))
    images, y = next(iter(prepare(source.records, cfg, data, batch_size=16, training=False)))
    keras.utils.set_random_seed(0)
    model = SOLO(cfg, labels_config=LabelsConfig(class_names=TINY_CLASS_NAMES, category_ids=TINY_CATEGORY_IDS),
                 postprocess_config=PostprocessConfig(nms_pre=100, max_per_img=20))
    model.compile(optimizer=keras.optimizers.Adam(3e-3, global_clipnorm=35.0))
    history = model.fit(images.numpy(), {k: v.numpy() for k, v in y.items()}, batch_size=8, epochs=epochs,
                        verbose=0, shuffle=False)
    return model, history.history


@pytest.fixture(scope="session")
def tiny_trained():
    """``tiny_trained(variant) -> (model, history)``: :func:`train_tiny`, once per variant per
    session. Tests must not change the model (export and predict only)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = train_tiny(variant)
        return cache[variant]

    return get
