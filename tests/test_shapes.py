import numpy as np
import pytest

from solo_tf.data.shapes import CLASS_NAMES, ShapesGenerator


def _batch(gen, indices):
    return [gen.sample(i) for i in indices]


def test_same_seed_and_index_give_the_same_image_in_any_order():
    a = ShapesGenerator(seed=3)
    b = ShapesGenerator(seed=3)
    first = a.sample(7)
    b.sample(0), b.sample(12)  # other draws must not shift image 7's stream
    again = b.sample(7)
    for k in ("image", "masks", "classes"):
        np.testing.assert_array_equal(first[k], again[k])


def test_different_seed_or_index_give_different_images():
    gen = ShapesGenerator(seed=0)
    other = ShapesGenerator(seed=1)
    assert not np.array_equal(gen.sample(0)["image"], gen.sample(1)["image"])
    assert not np.array_equal(gen.sample(0)["image"], other.sample(0)["image"])


def test_output_types_and_shapes():
    gen = ShapesGenerator(image_size=(96, 64), max_objects=4, seed=0)
    for s in _batch(gen, range(10)):
        n = len(s["classes"])
        assert s["image"].shape == (96, 64, 3) and s["image"].dtype == np.uint8
        assert s["masks"].shape == (n, 96, 64) and s["masks"].dtype == np.uint8
        assert s["classes"].dtype == np.int32
        assert 1 <= n <= 4
        assert set(np.unique(s["masks"])) <= {0, 1}
        assert ((s["classes"] >= 0) & (s["classes"] < len(CLASS_NAMES))).all()


def test_variety_of_classes_sizes_and_counts():
    gen = ShapesGenerator(image_size=(128, 128), max_objects=6, seed=0)
    samples = _batch(gen, range(60))
    classes = np.concatenate([s["classes"] for s in samples])
    assert len(np.unique(classes)) == len(CLASS_NAMES)
    counts = [len(s["classes"]) for s in samples]
    assert max(counts) >= 4 and min(counts) <= 2
    # Sizes: tight-box extent of each object relative to the image side.
    extents = []
    for s in samples:
        for m in s["masks"]:
            ys, xs = np.nonzero(m)
            extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
    extents = np.array(extents) / 128
    assert extents.min() < 0.12 and extents.max() > 0.45


def test_masks_are_nonempty_and_disjoint():
    gen = ShapesGenerator(max_objects=12, min_objects=8, seed=5)
    for s in _batch(gen, range(20)):
        m = s["masks"].astype(np.int32)
        assert (m.reshape(len(m), -1).sum(1) >= gen.min_area).all()
        assert m.sum(0).max() <= 1


def test_heavily_occluded_objects_are_removed():
    """With many large objects, some are hidden; survivors keep a visible share."""
    gen = ShapesGenerator(max_objects=12, min_objects=12, seed=2, min_size=0.4, max_size=0.6)
    counts = [len(s["classes"]) for s in _batch(gen, range(10))]
    assert min(counts) < 12


def test_last_object_is_painted_and_unlabelled_pixels_are_background():
    """Every mask shows a colour distinct from the background right around it."""
    gen = ShapesGenerator(max_objects=3, seed=4)
    for s in _batch(gen, range(10)):
        img = s["image"].astype(np.float32)
        for m in s["masks"].astype(bool):
            inside = img[m].mean(0)
            ys, xs = np.nonzero(m)
            ring = np.zeros_like(m)
            ring[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
            ring &= ~s["masks"].astype(bool).any(0)
            if ring.sum() < 20:
                continue
            assert np.abs(inside - img[ring].mean(0)).sum() > 30


def test_background_is_textured():
    gen = ShapesGenerator(seed=0)
    for s in _batch(gen, range(10)):
        bg = ~s["masks"].astype(bool).any(0)
        pixels = s["image"][bg]
        assert pixels.std(0).max() > 5
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


@pytest.mark.parametrize(
    "kwargs",
    [dict(image_size=(4, 4)), dict(min_objects=0), dict(min_objects=5, max_objects=2), dict(seed=-1),
     dict(min_size=0.5, max_size=0.2)],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="ShapesGenerator"):
        ShapesGenerator(**kwargs)


def test_negative_index_raises():
    with pytest.raises(ValueError, match="index"):
        ShapesGenerator().sample(-1)


def test_every_image_keeps_at_least_one_object_even_when_small():
    gen = ShapesGenerator(image_size=(64, 64), max_objects=3, seed=0)
    assert all(len(gen.sample(i)["classes"]) >= 1 for i in range(150))
