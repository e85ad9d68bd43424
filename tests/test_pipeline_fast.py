"""The stride-4 ``prepare`` against the previous full-resolution one (``prepare_reference``).

The previous code resized every mask to the full canvas with the image's resize,
thresholded it at 0.5 and measured it there; the library takes the nearest-neighbour map of
the same geometry and corrects it at the objects' edges exactly as the resize computes them,
and never builds the canvas-size masks. Enlarged (the plain bilinear resize), the two agree
exactly: checked on the pipeline benchmark's own data (``benchmarks/bench_pipeline.py``: 48
COCO-like 480x640 images with polygon objects, the ``solov2_r50`` canvas 800x1344, multi-scale
640-800 and flips) and on random small masks (noise, single pixels, checkerboards, full and
empty masks). Shrunk (antialiased), the nearest map stands for the resize: agreement on all but
edge pixels.
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


def test_stride4_masks_are_the_same(pairs):
    _, out = pairs
    pixels = 0
    for (y, _), (ry, _) in out:
        np.testing.assert_array_equal(y["masks"], ry["masks"])
        pixels += int(ry["masks"].sum())
    assert pixels > 100_000


def test_boxes_and_centres_are_the_same(pairs):
    _, out = pairs
    for (y, _), (ry, _) in out:
        real = ry["classes"] >= 0
        np.testing.assert_array_equal(y["boxes"][real], ry["boxes"][real])
        np.testing.assert_allclose(y["centers"][real], ry["centers"][real], rtol=0, atol=1e-3)


def test_every_grid_cell_is_the_same(pairs):
    """The grid assignment from either set of targets: category and owner of every cell of
    every level."""
    cfg, out = pairs
    m = cfg.model

    def grids(y):
        valid = (y["masks"].max((1, 2)) > 0) & (y["classes"] >= 0)
        return assign_grids(y["classes"][None], y["boxes"][None], y["centers"][None], valid[None],
                            m.image_size, m.num_grids, m.scale_ranges, m.pos_scale)

    cells = owned = 0
    for (y, _), (ry, _) in out:
        for (cat, own), (rcat, rown) in zip(grids(y), grids(ry)):
            cat, own, rcat, rown = (np.asarray(v) for v in (cat, own, rcat, rown))
            np.testing.assert_array_equal(cat, rcat)
            np.testing.assert_array_equal(own, rown)
            cells += cat.size
            owned += int((rown >= 0).sum())
    assert owned > 1000 and cells > 100_000


def random_masks(rng, h, w):
    """Masks that stress the edge corrections: smooth blobs, noise, single pixels, a
    checkerboard patch, a thin line, the whole image, and an empty one."""
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for _ in range(3):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(h, w) / 2)
        masks.append(((yy - cy) ** 2 / 1.5 + (xx - cx) ** 2 <= r**2))
    masks.append(rng.random((h, w)) < 0.3)
    single = np.zeros((h, w), bool)
    single[rng.integers(h), rng.integers(w)] = True
    single[rng.integers(h), rng.integers(w)] = True
    masks.append(single)
    board = np.zeros((h, w), bool)
    board[2:9, 3:11] = ((yy + xx) % 2 == 0)[2:9, 3:11]
    masks.append(board)
    line = np.zeros((h, w), bool)
    line[:, rng.integers(w)] = True
    masks.append(line)
    masks.append(np.ones((h, w), bool))
    masks.append(np.zeros((h, w), bool))
    return np.stack(masks).astype(np.uint8)


def run_both(records, H, W, multiscale, flip):
    args = (H, W, 12, 3, multiscale, None, flip)
    sig = {"image": tf.TensorSpec((None, None, 3), tf.uint8), "masks": tf.TensorSpec((None, None, None), tf.uint8),
           "classes": tf.TensorSpec((None,), tf.int32), "image_id": tf.TensorSpec((), tf.int64)}
    ds = tf.data.Dataset.from_generator(lambda: iter(records), output_signature=sig)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=5))).map(
        lambda r, rand: (pipeline._prepare_one(r, rand, *args)[1:], prepare_one_reference(r, rand, *args)[1:]))
    return [tf.nest.map_structure(lambda t: t.numpy(), p) for p in ds]


def records_of(rng, sizes):
    out = []
    for i, (h, w) in enumerate(sizes):
        masks = random_masks(rng, h, w)
        out.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "masks": masks,
                    "classes": (np.arange(len(masks)) % 3).astype(np.int32), "image_id": np.int64(i)})
    return out


def test_random_masks_enlarged_are_the_same_at_every_scale_and_flip():
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(9, 40)), int(rng.integers(9, 40))) for _ in range(24)]
    # short sides drawn from 40..64: enlargements of 1x to ~7x, most not integer
    out = run_both(records_of(rng, sizes), 64, 96, (40, 64, 1), True)
    for (y, meta), (ry, rmeta) in out:
        np.testing.assert_array_equal(y["classes"], ry["classes"])
        np.testing.assert_array_equal(y["masks"], ry["masks"])
        np.testing.assert_array_equal(y["boxes"], ry["boxes"])
        np.testing.assert_allclose(y["centers"], ry["centers"], rtol=0, atol=1e-4)
        for key in ("valid_size", "dropped_empty", "dropped_overflow"):
            np.testing.assert_array_equal(meta[key], rmeta[key])
    assert len(out) == 24


def test_random_blobs_shrunk_agree_on_all_but_edge_pixels():
    rng = np.random.default_rng(1)
    sizes = [(int(rng.integers(100, 200)), int(rng.integers(100, 200))) for _ in range(6)]
    records = records_of(rng, sizes)
    for r in records:  # smooth blobs only: the antialiased resize of noise is not a shape
        r["masks"], r["classes"] = r["masks"][:3], r["classes"][:3]
    out = run_both(records, 64, 96, None, True)
    inter = union = 0
    for (y, _), (ry, _) in out:
        real = ry["classes"] >= 0
        np.testing.assert_array_equal(y["classes"], ry["classes"])
        assert np.abs(y["boxes"][real] - ry["boxes"][real]).max() <= 1.0
        assert np.abs(y["centers"][real] - ry["centers"][real]).max() <= 0.5
        a, b = y["masks"].astype(bool), ry["masks"].astype(bool)
        inter += int((a & b).sum())
        union += int((a | b).sum())
    assert inter / union >= 0.95, f"{inter / union:.3f}"
