"""The heads' GroupNorm: Keras's GroupNormalization's function and weights, in 4-D ops only."""

import keras
import numpy as np
import pytest

from solo_tf.heads import ConvGNReLU, GroupNorm


def numpy_group_norm(x, groups, gamma, beta, eps=1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups).astype(np.float64)
    mean = g.mean((1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean((1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * gamma + beta


@pytest.mark.parametrize("shape, groups, offset", [((2, 9, 13, 32), 8, 0.0), ((1, 5, 7, 64), 32, 40.0),
                                                   ((3, 4, 4, 16), 16, -3.0), ((1, 6, 6, 8), 1, 1.0)])
def test_matches_keras_group_normalization_and_numpy(shape, groups, offset):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * rng.uniform(0.1, 5, shape[-1]) + offset).astype("float32")
    gamma, beta = (rng.normal(size=shape[-1]).astype("float32") for _ in range(2))
    ours, theirs = GroupNorm(groups), keras.layers.GroupNormalization(groups=groups, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(shape)
        layer.set_weights([gamma, beta])
    out = keras.ops.convert_to_numpy(ours(x))
    np.testing.assert_allclose(out, numpy_group_norm(x, groups, gamma, beta), atol=5e-5, rtol=0)
    # Keras's float32 sums drift more than ours on channels far from zero (9e-5 vs 2e-5 of
    # float64 at offset 40)
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(theirs(x)), atol=2e-4, rtol=0)
    # the same variables, in the same order, as Keras's layer: checkpoints carry over
    assert [v.path.split("/")[-1] for v in ours.weights] == ["gamma", "beta"]


def test_each_image_is_normalised_on_its_own_and_unknown_spatial_sizes_work():
    layer = GroupNorm(4)
    inp = keras.Input((None, None, 8))
    model = keras.Model(inp, layer(inp))
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1, 5, 6, 8)).astype("float32")
    b = (rng.normal(size=(1, 5, 6, 8)) * 10 + 3).astype("float32")
    both = keras.ops.convert_to_numpy(model(np.concatenate([a, b])))
    np.testing.assert_allclose(both[:1], keras.ops.convert_to_numpy(model(a)), atol=1e-5)
    np.testing.assert_allclose(both[1:], keras.ops.convert_to_numpy(model(b)), atol=1e-5)
    assert model(rng.normal(size=(2, 3, 11, 8)).astype("float32")).shape == (2, 3, 11, 8)


def test_mixed_precision_computes_in_float32_and_returns_the_compute_dtype():
    layer = GroupNorm(2, dtype="mixed_bfloat16")
    x = np.random.default_rng(2).normal(size=(1, 4, 4, 4)).astype("float32") * 100 + 1000
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.gamma.dtype) == "float32"
    ref = numpy_group_norm(x, 2, np.ones(4), np.zeros(4))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), ref, atol=0.05)


def test_groups_that_do_not_divide_the_channels_raise():
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        GroupNorm(3).build((1, 4, 4, 8))


def test_conv_gn_relu_round_trips_through_its_config():
    unit = ConvGNReLU(8, norm_groups=4, name="unit")
    x = np.random.default_rng(3).normal(size=(1, 6, 6, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(unit(x))
    again = ConvGNReLU.from_config(unit.get_config())
    again.build((1, 6, 6, 3))
    again.set_weights(unit.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)), y, atol=1e-6)
    assert isinstance(again.norm, GroupNorm) and again.norm.groups == 4
