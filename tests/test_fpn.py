import keras
import numpy as np
import pytest

from solo_tf.fpn import FeaturePyramid

IN_CHANNELS = {"C2": 8, "C3": 12, "C4": 16, "C5": 20}


def _inputs(h=128, w=96, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: rng.normal(size=(batch, h // s, w // s, IN_CHANNELS[k])).astype("float32")
        for k, s in zip(("C2", "C3", "C4", "C5"), (4, 8, 16, 32))
    }


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_output_levels_and_shapes():
    out = FeaturePyramid(24)(_inputs(128, 96))
    assert sorted(out) == ["P2", "P3", "P4", "P5", "P6"]
    for k, s in zip(("P2", "P3", "P4", "P5"), (4, 8, 16, 32)):
        assert tuple(out[k].shape) == (2, 128 // s, 96 // s, 24), k
    # P5 is 4 x 3; the stride-2 subsample keeps rows/columns 0, 2, ... -> 2 x 2.
    assert tuple(out["P6"].shape) == (2, 2, 2, 24)


def test_symbolic_shapes_and_odd_p5():
    # 800 x 1088 (the paper's padded input): P5 is 25 x 34, P6 rounds up to 13 x 17.
    fpn = FeaturePyramid(8)
    sym = {k: keras.Input((800 // s, 1088 // s, IN_CHANNELS[k])) for k, s in zip(IN_CHANNELS, (4, 8, 16, 32))}
    out = fpn(sym)
    assert tuple(out["P5"].shape) == (None, 25, 34, 8)
    assert tuple(out["P6"].shape) == (None, 13, 17, 8)
    assert fpn.compute_output_shape({k: v.shape for k, v in sym.items()})["P6"] == (None, 13, 17, 8)


def _conv_same(x, kernel, bias):
    """Reference 2-D convolution, stride 1, zero 'same' padding. x (B,H,W,Ci), kernel (k,k,Ci,Co)."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("bhwc,cd->bhwd", xp[:, dy : dy + h, dx : dx + w], kernel[dy, dx])
    return out + bias


def test_matches_numpy_reference():
    """Laterals, top-down nearest x2 sum, 3x3 smoothing and P6 = P5[::2, ::2], against numpy."""
    x = _inputs(64, 128)
    fpn = FeaturePyramid(6)
    out = fpn(x)
    rng = np.random.default_rng(3)
    # Non-zero biases so a missing bias would show up.
    for conv in fpn.lateral_convs + fpn.output_convs:
        conv.bias.assign(rng.normal(size=conv.bias.shape).astype("float32"))
    out = {k: _np(v) for k, v in fpn(x).items()}

    lat = [_conv_same(x[k], _np(c.kernel), _np(c.bias)) for k, c in zip(("C2", "C3", "C4", "C5"), fpn.lateral_convs)]
    for i in (3, 2, 1):
        lat[i - 1] = lat[i - 1] + lat[i].repeat(2, axis=1).repeat(2, axis=2)
    ref = [_conv_same(t, _np(c.kernel), _np(c.bias)) for t, c in zip(lat, fpn.output_convs)]
    ref.append(ref[-1][:, ::2, ::2])
    for k, r in zip(("P2", "P3", "P4", "P5", "P6"), ref):
        np.testing.assert_allclose(out[k], r, rtol=1e-4, atol=1e-4, err_msg=k)


def test_top_down_path_reaches_p2():
    x = _inputs(64, 64)
    fpn = FeaturePyramid(8)
    base = _np(fpn(x)["P2"])
    x2 = dict(x, C5=x["C5"] + 1.0)
    assert not np.allclose(_np(fpn(x2)["P2"]), base)


def test_config_round_trip():
    fpn = FeaturePyramid(16, name="my_fpn")
    x = _inputs(64, 64)
    y = fpn(x)
    cfg = fpn.get_config()
    assert cfg["channels"] == 16 and cfg["name"] == "my_fpn"
    clone = FeaturePyramid.from_config(cfg)
    assert clone.get_config() == cfg
    clone(x)
    clone.set_weights(fpn.get_weights())
    y2 = clone(x)
    for k in y:
        np.testing.assert_allclose(_np(y2[k]), _np(y[k]), rtol=1e-6, atol=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fpn))
    assert isinstance(restored, FeaturePyramid) and restored.channels == 16


def test_keras_file_round_trip(tmp_path):
    sym = {k: keras.Input((64 // s, 64 // s, c), name=k) for (k, c), s in zip(IN_CHANNELS.items(), (4, 8, 16, 32))}
    model = keras.Model(sym, FeaturePyramid(8)(sym))
    path = tmp_path / "fpn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _inputs(64, 64)
    a, b = model(x), loaded(x)
    for k in a:
        np.testing.assert_allclose(_np(b[k]), _np(a[k]), rtol=1e-6, atol=1e-6)


def test_sizes_that_do_not_halve_raise():
    x = _inputs(64, 64)
    x["C4"] = np.zeros((2, 5, 4, IN_CHANNELS["C4"]), "float32")
    with pytest.raises(ValueError, match="multiples of 32"):
        FeaturePyramid(8)(x)


def test_missing_level_raises():
    x = _inputs(64, 64)
    del x["C3"]
    with pytest.raises(ValueError, match="C2, C3, C4, C5"):
        FeaturePyramid(8)(x)
