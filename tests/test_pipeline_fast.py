"""The stride-4 ``prepare`` against the previous full-resolution one, on the pipeline
benchmark's own data (``benchmarks/bench_pipeline.py``: 48 COCO-like 480x640 images with
polygon objects, the ``solov2_r50`` canvas 800x1344, multi-scale 640-800 and flips).

The previous code resized every mask to the full canvas bilinearly, thresholded it at 0.5 and
measured it there; the library now takes the same geometry as a nearest-neighbour map with
half-pixel centres and never builds the canvas-size masks. The two differ only in pixels on
an object's edge, where the thresholded bilinear value of a slanted edge falls on the other
side of 0.5.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from prepare_reference import prepare_one_reference  # noqa: E402

from solo_tf.config import load_config  # noqa: E402
from solo_tf.data import pipeline  # noqa: E402
from solo_tf.data.sources import coco_source  # noqa: E402
from solo_tf.targets import assign_grids  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_pipeline", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(fast, reference) targets of every benchmark image, each drawn with the same random
    scale and flip."""
    bench = bench_module()
    cfg = load_config("solov2_r50")
    ann, images = bench.write_synthetic_coco(tmp_path_factory.mktemp("coco"), 48)
    cfg.data.source = "coco"
    cfg.data.coco.train_annotations, cfg.data.coco.train_images = str(ann), str(images)
    src = coco_source(cfg.data, "train", cfg.model.num_classes)
    m, d = cfg.model, cfg.data
    H, W = m.image_size
    # any integer short side in the range (not the preset's 32-pixel steps): more scales
    args = (H, W, int(d.max_instances), int(m.num_classes), (*d.multiscale, 1), d.max_long_side, True)

    def both(record, rand):
        return pipeline._prepare_one(record, rand, *args)[1:], prepare_one_reference(record, rand, *args)[1:]

    ds = tf.data.Dataset.zip((src.records, tf.data.Dataset.random(seed=3))).map(both)
    out = [tf.nest.map_structure(lambda t: t.numpy(), p) for p in ds]
    assert len(out) == 48
    return cfg, out


def test_the_same_objects_are_kept_and_the_augmentation_is_the_same(pairs):
    _, out = pairs
    for (y, meta), (ry, rmeta) in out:
        np.testing.assert_array_equal(y["classes"], ry["classes"])
        for key in ("valid_size", "scale", "orig_size", "dropped_empty", "dropped_overflow"):
            np.testing.assert_array_equal(meta[key], rmeta[key])
    scales = {float(m["scale"]) for (_, m), _ in out}
    assert len(scales) > 10  # multi-scale really drew different sizes


def test_stride4_masks_agree_on_99_percent_of_pixels(pairs):
    _, out = pairs
    inter = union = 0
    for (y, _), (ry, _) in out:
        a, b = y["masks"].astype(bool), ry["masks"].astype(bool)
        inter += int((a & b).sum())
        union += int((a | b).sum())
    assert union > 100_000
    assert inter / union >= 0.99, f"stride-4 mask targets agree on {inter / union:.4%} of their pixels"


def test_boxes_and_centres_agree_to_a_pixel(pairs):
    _, out = pairs
    for (y, _), (ry, _) in out:
        real = ry["classes"] >= 0
        assert np.abs(y["boxes"][real] - ry["boxes"][real]).max() <= 1.0
        assert np.abs(y["centers"][real] - ry["centers"][real]).max() <= 0.5


def test_grid_targets_agree(pairs):
    """The grid assignment from either set of targets: category and owner of every cell of
    every level. Cells can differ only where an object's centre or box edge lies within the
    two geometries' sub-pixel difference of a cell boundary; on this data that is 2 of 185,856."""
    cfg, out = pairs
    m = cfg.model

    def grids(y):
        valid = (y["masks"].max((1, 2)) > 0) & (y["classes"] >= 0)
        return assign_grids(y["classes"][None], y["boxes"][None], y["centers"][None], valid[None],
                            m.image_size, m.num_grids, m.scale_ranges, m.pos_scale)

    cells = differ = owned = 0
    for (y, _), (ry, _) in out:
        for (cat, own), (rcat, rown) in zip(grids(y), grids(ry)):
            cat, own, rcat, rown = (np.asarray(v) for v in (cat, own, rcat, rown))
            cells += cat.size
            owned += int((rown >= 0).sum())
            differ += int(((cat != rcat) | (own != rown)).sum())
    assert owned > 1000
    assert differ <= 1e-4 * cells, f"{differ} of {cells} grid cells differ"
