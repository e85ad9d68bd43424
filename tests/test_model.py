"""Model wiring, losses as the reference's own head tests, serialization round trips."""

import numpy as np
import pytest
from keras import ops

from conftest import tiny_model_config
from solo_tf.model import SOLO

VARIANTS = ["solov2", "solo", "decoupled_solo"]


def _one_object_batch(batch=2, size=64, slots=4):
    """Image 0 holds one 32x24 rectangle of class 1; image 1 is empty."""
    masks = np.zeros((batch, slots, size // 4, size // 4), np.uint8)
    masks[0, 0, 4:10, 4:12] = 1  # rows 16..40, cols 16..48 at full resolution
    classes = np.full((batch, slots), -1, np.int32)
    classes[0, 0] = 1
    boxes = np.zeros((batch, slots, 4), np.float32)
    boxes[0, 0] = [16, 16, 48, 40]
    centers = np.zeros((batch, slots, 2), np.float32)
    centers[0, 0] = [31.5, 27.5]
    return dict(classes=classes, boxes=boxes, masks=masks, centers=centers)


def _empty_batch(batch=2, size=64, slots=4):
    return dict(
        classes=np.full((batch, slots), -1, np.int32),
        boxes=np.zeros((batch, slots, 4), np.float32),
        masks=np.zeros((batch, slots, size // 4, size // 4), np.uint8),
        centers=np.zeros((batch, slots, 2), np.float32),
    )


def _images(batch=2, size=64, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes_per_level(variant):
    cfg = tiny_model_config(variant)
    model = SOLO(cfg)
    out = model(_images())
    e = cfg.mask_channels
    for lvl, (s, stride) in enumerate(zip(cfg.num_grids, cfg.strides)):
        assert tuple(out[f"category_{lvl}"].shape) == (2, s, s, cfg.num_classes)
        hm = 64 // (stride // 2)
        if variant == "solov2":
            assert tuple(out[f"kernel_{lvl}"].shape) == (2, s, s, e)
        elif variant == "solo":
            assert tuple(out[f"mask_{lvl}"].shape) == (2, hm, hm, s * s)
        else:
            assert tuple(out[f"mask_x_{lvl}"].shape) == (2, hm, hm, s)
            assert tuple(out[f"mask_y_{lvl}"].shape) == (2, hm, hm, s)
    if variant == "solov2":
        assert tuple(out["mask_feature"].shape) == (2, 16, 16, e)


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_ground_truth_gives_focal_only(variant):
    model = SOLO(tiny_model_config(variant))
    focal, dice = model.solo_losses(_empty_batch(), model(_images()))
    focal, dice = float(focal), float(dice)
    assert np.isfinite(focal) and focal > 0
    assert dice == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_object_gives_both_losses(variant):
    model = SOLO(tiny_model_config(variant))
    focal, dice = model.solo_losses(_one_object_batch(), model(_images()))
    assert float(focal) > 0 and np.isfinite(float(focal))
    assert 0 < float(dice) <= 3.0 + 1e-6  # weight 3 x mean Dice in [0, 1]


def test_pipeline_grids_give_the_same_loss_as_in_model_assignment():
    model = SOLO(tiny_model_config("solov2"))
    y = _one_object_batch()
    out = model(_images())
    grids = model.grid_targets(y)
    y_with = dict(y)
    for lvl, (c, o) in enumerate(grids):
        y_with[f"grid_category_{lvl}"] = ops.convert_to_numpy(c)
        y_with[f"grid_owner_{lvl}"] = ops.convert_to_numpy(o)
        # the one object is positive somewhere, and only where its class is
        assert set(np.unique(ops.convert_to_numpy(c))) <= {-1, 1}
    a = [float(v) for v in model.solo_losses(y, out)]
    b = [float(v) for v in model.solo_losses(y_with, out)]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_focal_loss_counts_positives():
    """Positives fall where the object's centre is; a background cell gets no class."""
    model = SOLO(tiny_model_config("solov2"))
    grids = model.grid_targets(_one_object_batch())
    # object: sqrt(32*24) = 27.7 -> levels 0 (1..32) and 1 (16..64); not level 2 (32..256)
    pos = [int((ops.convert_to_numpy(o) >= 0).sum()) for _, o in grids]
    assert pos[0] > 0 and pos[1] > 0 and pos[2] == 0
    cate0 = ops.convert_to_numpy(grids[0][0])[0]
    s = 12
    i, j = int(27.5 / 64 * s), int(31.5 / 64 * s)
    assert cate0[i, j] == 1
    assert cate0[0, 0] == -1


@pytest.mark.parametrize("variant", VARIANTS)
def test_get_config_round_trip_gives_identical_outputs(variant):
    model = SOLO(tiny_model_config(variant))
    clone = SOLO.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = _images(1)
    a, b = model(x), clone(x)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(ops.convert_to_numpy(a[k]), ops.convert_to_numpy(b[k]))


@pytest.mark.parametrize("variant", ["solov2", "solo"])
def test_keras_file_round_trip_gives_identical_outputs(variant, tmp_path):
    import keras

    model = SOLO(tiny_model_config(variant))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SOLO)
    assert loaded.model_config == model.model_config
    x = _images(1, seed=3)
    a, b = model(x), loaded(x)
    for k in a:
        np.testing.assert_array_equal(ops.convert_to_numpy(a[k]), ops.convert_to_numpy(b[k]))


def test_bad_model_config_names_the_key():
    from solo_tf.config import ConfigError

    with pytest.raises(ConfigError, match="num_gridz"):
        SOLO({"num_gridz": [1]})
