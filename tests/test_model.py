"""Model wiring (the variant's heads, the loss object in compute_loss), serialization round trips."""

import numpy as np
import pytest
from keras import ops

from batches import images as _images
from batches import one_object_batch as _one_object_batch
from conftest import tiny_model_config
from solo_tf.model import SOLO

VARIANTS = ["solov2", "solo", "decoupled_solo"]


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
    # the loss and the decoder read the variant's output names: the model gives exactly those
    assert sorted(out) == sorted(model.variant.output_names())


def test_compute_loss_is_the_loss_objects_sum_and_tracks_both_terms():
    model = SOLO(tiny_model_config("solo"))
    y, out = _one_object_batch(), model(_images())
    focal, dice = (float(v) for v in model.solo_loss(y, out))
    total = float(model.compute_loss(y=y, y_pred=out))
    np.testing.assert_allclose(total, focal + dice, rtol=1e-6)
    assert float(model.focal_loss_tracker.result()) == pytest.approx(focal)
    assert float(model.dice_loss_tracker.result()) == pytest.approx(dice)


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


@pytest.mark.parametrize("variant", VARIANTS)
def test_keras_file_round_trip_gives_identical_outputs(variant, tmp_path):
    import keras

    model = SOLO(tiny_model_config(variant))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SOLO)
    assert loaded.model_config == model.model_config
    assert type(loaded.variant) is type(model.variant)
    assert loaded.solo_loss.loss_config == model.solo_loss.loss_config
    x = _images(1, seed=3)
    a, b = model(x), loaded(x)
    for k in a:
        np.testing.assert_array_equal(ops.convert_to_numpy(a[k]), ops.convert_to_numpy(b[k]))


def test_bad_model_config_names_the_key():
    from solo_tf.config import ConfigError

    with pytest.raises(ConfigError, match="num_gridz"):
        SOLO({"num_gridz": [1]})
