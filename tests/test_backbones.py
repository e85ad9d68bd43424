import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from solo_tf.backbones import (
    BACKBONE_CHANNELS,
    BACKBONES,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    LEVELS,
    backbone_channels,
    backbone_input_normalization,
    build_backbone,
    freeze_backbone,
)


REPO = Path(__file__).resolve().parents[1]
STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
# The large backbones: build at 64x64 and run one image only.
SMALL_INPUT = {"resnet50", "resnet101", "mobilenetv3_small", "mobilenetv3_large"}


def test_config_accepts_every_backbone_name():
    from solo_tf.config import ConfigError, ModelConfig
    from solo_tf.variants import check_model_config

    for name in BACKBONES:
        check_model_config(ModelConfig(backbone=name))
    with pytest.raises(ConfigError, match="model.backbone must be one of"):
        check_model_config(ModelConfig(backbone="resnet19"))


@pytest.mark.parametrize("name", BACKBONES)
def test_levels_strides_channels(name):
    h, w = (64, 64) if name in SMALL_INPUT else (64, 128)
    model = build_backbone(name, (h, w, 3))
    x = np.random.default_rng(0).normal(size=(1, h, w, 3)).astype("float32")
    out = model(x)
    assert sorted(out) == ["C2", "C3", "C4", "C5"]
    for level, ch in zip(("C2", "C3", "C4", "C5"), backbone_channels(name)):
        s = STRIDES[level]
        assert tuple(out[level].shape) == (1, h // s, w // s, ch), level
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(out[level])))


def _torchvision_resnet_params(kind, blocks):
    """Parameter count of torchvision's ResNet without fc (conv weights + BN affine)."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731 - bias=False everywhere
    bn = lambda c: 2 * c  # noqa: E731 - running stats are buffers, not parameters
    total = conv(3, 64, 7) + bn(64)
    cin = 64
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        cout = width if kind == "basic" else 4 * width
        for b in range(n):
            if kind == "basic":
                total += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            else:
                total += conv(cin, width, 1) + conv(width, width, 3) + conv(width, cout, 1) + 2 * bn(width) + bn(cout)
            if b == 0 and (stage > 0 or cin != cout):
                total += conv(cin, cout, 1) + bn(cout)
            cin = cout
    return total


# torchvision's published totals (models.resnetXX().parameters()), fc = 512|2048 * 1000 + 1000.
_TORCHVISION_TOTALS = {
    "resnet18": ("basic", (2, 2, 2, 2), 11_689_512 - 513_000),
    "resnet34": ("basic", (3, 4, 6, 3), 21_797_672 - 513_000),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 25_557_032 - 2_049_000),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 44_549_160 - 2_049_000),
}


@pytest.mark.parametrize("name", sorted(_TORCHVISION_TOTALS))
def test_resnet_parameter_count_matches_torchvision(name):
    kind, blocks, published = _TORCHVISION_TOTALS[name]
    model = build_backbone(name, (64, 64, 3))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == _torchvision_resnet_params(kind, blocks) == published


def test_resnet_uses_torchvision_names():
    names = {layer.name for layer in build_backbone("resnet18", (64, 64, 3)).layers}
    for n in ("conv1", "bn1", "layer1_1_conv2", "layer2_0_downsample_conv", "layer4_1_bn2"):
        assert n in names
    names = {layer.name for layer in build_backbone("resnet50", (64, 64, 3)).layers}
    for n in ("conv1", "bn1", "layer1_0_downsample_conv", "layer1_0_downsample_bn", "layer3_5_conv3", "layer4_2_bn3"):
        assert n in names
    assert "layer3_6_conv1" not in names


def test_bottleneck_is_torchvision_v1_5():
    """Stride on the 3x3 conv (not the caffe-style 1x1), no conv biases, BN eps 1e-5."""
    model = build_backbone("resnet50", (64, 64, 3))
    for stage in (2, 3, 4):
        assert model.get_layer(f"layer{stage}_0_conv1").strides == (1, 1)
        assert model.get_layer(f"layer{stage}_0_conv2").strides == (2, 2)
        assert model.get_layer(f"layer{stage}_0_downsample_conv").strides == (2, 2)
    assert model.get_layer("layer1_0_downsample_conv").strides == (1, 1)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(convs) == len(bns) == 53  # 1 stem + 16 blocks x 3 + 4 downsample
    assert not any(c.use_bias for c in convs)
    assert all(b.epsilon == 1e-5 for b in bns)


def test_local_weights_round_trip(tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype("float32")
    a = build_backbone("tiny", (64, 96, 3))
    # Move BN statistics off their defaults so the file carries non-trivial state.
    a.set_weights([w + np.random.default_rng(i).normal(0, 0.1, w.shape).astype(w.dtype) for i, w in enumerate(a.get_weights())])
    path = tmp_path / "tiny.weights.h5"
    a.save_weights(path)

    b = build_backbone("tiny", (64, 96, 3), weights=path)
    fresh = build_backbone("tiny", (64, 96, 3))
    ya, yb, yf = a(x), b(x), fresh(x)
    for k in ya:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(yb[k]), keras.ops.convert_to_numpy(ya[k]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(keras.ops.convert_to_numpy(yf["C5"]), keras.ops.convert_to_numpy(ya["C5"]))


def test_missing_weights_file_names_it(tmp_path):
    path = tmp_path / "absent.weights.h5"
    with pytest.raises(FileNotFoundError, match="absent.weights.h5"):
        build_backbone("tiny", (64, 64, 3), weights=str(path))


def test_mismatched_weights_file_names_it(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    build_backbone("tiny", (64, 64, 3)).save_weights(path)
    with pytest.raises(ValueError, match="tiny.weights.h5.*resnet18"):
        build_backbone("resnet18", (64, 64, 3), weights=path)


def test_weights_file_must_be_weights_h5(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="model.h5"):
        build_backbone("tiny", (64, 64, 3), weights=path)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50") as e:
        build_backbone("resnet9000", (64, 64, 3))
    assert "resnet9000" in str(e.value)
    with pytest.raises(ValueError, match="mobilenetv3_small"):
        backbone_channels("vgg16")


@pytest.mark.parametrize("name", ["tiny", "resnet18", "resnet34", "resnet50", "resnet101"])
def test_imagenet_for_our_resnets_raises(name):
    with pytest.raises(ValueError, match="no ImageNet weights download.*torchvision or timm"):
        build_backbone(name, (64, 64, 3), weights="imagenet")


@pytest.mark.parametrize("shape", [(60, 64, 3), (64, 64, 1), (64, 64)])
def test_bad_input_shape_raises(shape):
    with pytest.raises(ValueError, match="input"):
        build_backbone("tiny", shape)


def test_channel_table_covers_every_backbone():
    assert set(BACKBONE_CHANNELS) == set(BACKBONES)
    assert all(len(v) == 4 for v in BACKBONE_CHANNELS.values())


_JAX_SCRIPT = """
import json, sys
import numpy as np
import keras
from solo_tf.backbones import build_backbone
from solo_tf.fpn import FeaturePyramid
images = keras.Input((64, 96, 3))
model = keras.Model(images, FeaturePyramid(16)(build_backbone("tiny", (64, 96, 3))(images)))
model.load_weights(sys.argv[1])
out = model(np.load(sys.argv[2]))
np.savez(sys.argv[3], **{k: keras.ops.convert_to_numpy(v) for k, v in out.items()})
print(json.dumps({"backend": keras.backend.backend(), "tensorflow_imported": "tensorflow" in sys.modules,
                  "shapes": {k: list(v.shape) for k, v in out.items()}}))
"""


def test_tiny_backbone_and_fpn_run_on_jax(tmp_path):
    """The same weights give the same pyramid on JAX, in a process that never imports TF."""
    from solo_tf.fpn import FeaturePyramid

    images = keras.Input((64, 96, 3))
    model = keras.Model(images, FeaturePyramid(16)(build_backbone("tiny", (64, 96, 3))(images)))
    weights, x_path, out_path = tmp_path / "m.weights.h5", tmp_path / "x.npy", tmp_path / "out.npz"
    model.save_weights(weights)
    x = np.random.default_rng(2).normal(size=(2, 64, 96, 3)).astype("float32")
    np.save(x_path, x)
    expected = {k: keras.ops.convert_to_numpy(v) for k, v in model(x).items()}

    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(weights), str(x_path), str(out_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["tensorflow_imported"] is False
    assert report["shapes"] == {
        "P2": [2, 16, 24, 16], "P3": [2, 8, 12, 16], "P4": [2, 4, 6, 16], "P5": [2, 2, 3, 16], "P6": [2, 1, 2, 16],
    }
    got = np.load(out_path)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("name,ctor", [("mobilenetv3_small", "MobileNetV3Small"), ("mobilenetv3_large", "MobileNetV3Large")])
def test_imagenet_is_requested_from_keras_applications(monkeypatch, name, ctor):
    """No download in tests: the constructor is wrapped to record what it was asked for."""
    real = getattr(keras.applications, ctor)
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        return real(**dict(kwargs, weights=None))

    monkeypatch.setattr(keras.applications, ctor, fake)
    model = build_backbone(name, (64, 64, 3), weights="imagenet")
    assert calls and calls[0]["weights"] == "imagenet" and calls[0]["include_top"] is False
    assert calls[0]["include_preprocessing"] is False and calls[0]["minimalistic"] is False
    assert sorted(model.output) == ["C2", "C3", "C4", "C5"]


@pytest.mark.parametrize("name", ["mobilenetv3_small", "resnet18"])
def test_batchnorm_moving_statistics_follow_the_batch_at_momentum_0_9(name):
    """Every backbone's BatchNorm, keras.applications' MobileNetV3 (built at 0.999) included,
    moves its statistics 10% of the way to the batch's per training step, and keeps that
    momentum through a save and reload."""
    from solo_tf.backbones import BN_MOMENTUM

    model = build_backbone(name, (64, 64, 3))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and BN_MOMENTUM == 0.9
    assert {layer.momentum for layer in norms} == {BN_MOMENTUM}
    first = norms[0]
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 8, 8, first.input.shape[-1])).astype("float32")
    first(x, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_mean), 0.1 * x.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    reloaded = keras.Model.from_config(model.get_config())
    assert {layer.momentum for layer in reloaded.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}


def test_imagenet_download_failure_is_explained(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.applications, "MobileNetV3Large", offline)
    with pytest.raises(RuntimeError, match="mobilenetv3_large.*weights.h5"):
        build_backbone("mobilenetv3_large", (64, 64, 3), weights="imagenet")


# --- input normalisation ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "resnet18", "resnet34", "resnet50", "resnet101"])
def test_resnets_expect_imagenet_mean_std(name):
    assert backbone_input_normalization(name) == (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)


def test_mobilenet_normalization_is_keras_applications_preprocessing():
    """(image - mean) / std with the declared values equals keras.applications' own
    include_preprocessing=True path on raw 0-255 RGB, with the same weights."""
    mean, std = backbone_input_normalization("mobilenetv3_small")
    ours = build_backbone("mobilenetv3_small", (64, 64, 3))
    ref = keras.applications.MobileNetV3Small(
        input_shape=(64, 64, 3), include_top=False, weights=None, minimalistic=False, include_preprocessing=True
    )
    ref.set_weights(ours.get_weights())
    image = np.random.default_rng(3).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    got = ours((image - np.array(mean, "float32")) / np.array(std, "float32"))["C5"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(ref(image)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="vgg16"):
        backbone_input_normalization("vgg16")


# --- frozen BatchNorm and stages ----------------------------------------------------------


def _values(layer):
    return [keras.ops.convert_to_numpy(v).copy() for v in layer.weights]


def _fit_probe(backbone, steps=2):
    """backbone + pooled C2..C5 -> Dense(1), ``steps`` SGD steps of ``fit`` on random data.
    Returns {layer name: (values before, values after)} for every layer with weights."""
    images = keras.Input(backbone.input.shape[1:])
    feats = backbone(images)
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(feats[k]) for k in LEVELS])
    probe = keras.Model(images, keras.layers.Dense(1, name="probe_head")(pooled))
    probe.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4,) + tuple(backbone.input.shape[1:])).astype("float32")
    y = rng.normal(size=(4, 1)).astype("float32")
    layers_ = [l for l in backbone.layers if l.weights] + [probe.get_layer("probe_head")]
    before = {l.name: _values(l) for l in layers_}
    probe.fit(x, y, batch_size=4, epochs=steps, shuffle=False, verbose=0)
    return {l.name: (before[l.name], _values(l)) for l in layers_}


def _changed(pair):
    """Per variable of a layer: did fit change it?"""
    before, after = pair
    return [not np.array_equal(b, a) for b, a in zip(before, after)]


def _in_frozen_stem_or_res2(name):
    return name in ("conv1", "bn1") or name.startswith("layer1_")


def test_fit_with_norm_eval_and_frozen_stages_keeps_them_fixed():
    """The reference setting (norm_eval=True, frozen_stages=1)."""
    backbone = freeze_backbone(build_backbone("resnet18", (64, 64, 3)), norm_eval=True, frozen_stages=1)
    result = _fit_probe(backbone)
    bns = [l.name for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    convs = [l.name for l in backbone.layers if isinstance(l, keras.layers.Conv2D)]
    for name in bns:  # gamma, beta, moving mean, moving variance
        assert not any(_changed(result[name])), name
    for name in convs:
        if _in_frozen_stem_or_res2(name):
            assert not any(_changed(result[name])), name
        else:
            assert all(_changed(result[name])), name
    assert all(_changed(result["probe_head"]))


def test_fit_with_frozen_stages_only_trains_later_batchnorm():
    backbone = freeze_backbone(build_backbone("resnet18", (64, 64, 3)), norm_eval=False, frozen_stages=1)
    result = _fit_probe(backbone)
    for layer in backbone.layers:
        if not layer.weights:
            continue
        changed = _changed(result[layer.name])
        if _in_frozen_stem_or_res2(layer.name):
            assert not any(changed), layer.name
        else:
            assert all(changed), layer.name  # BN: gamma, beta and both moving statistics


def test_fit_without_freezing_trains_everything():
    backbone = freeze_backbone(build_backbone("resnet18", (64, 64, 3)), norm_eval=False, frozen_stages=0)
    result = _fit_probe(backbone)
    for name, pair in result.items():
        assert all(_changed(pair)), name


@pytest.mark.parametrize("stages,frozen_prefixes", [(1, ("stem_", "c2_")), (3, ("stem_", "c2_", "c3_", "c4_"))])
def test_frozen_stages_are_the_layers_below_the_level(stages, frozen_prefixes):
    backbone = freeze_backbone(build_backbone("tiny", (64, 64, 3)), norm_eval=False, frozen_stages=stages)
    for layer in backbone.layers:
        if layer.weights:
            assert layer.trainable == (not layer.name.startswith(frozen_prefixes)), layer.name


def test_freeze_mobilenet_stage_one():
    backbone = freeze_backbone(build_backbone("mobilenetv3_small", (64, 64, 3)), norm_eval=True, frozen_stages=1)
    assert not backbone.get_layer("conv").trainable
    assert not backbone.get_layer("expanded_conv_project").trainable  # produces C2
    assert backbone.get_layer("expanded_conv_1_expand").trainable
    assert not backbone.get_layer("expanded_conv_1_expand_bn").trainable  # norm_eval
    assert backbone.trainable_weights


@pytest.mark.parametrize("stages", [-1, 5, 1.0, True])
def test_freeze_rejects_bad_stage_counts(stages):
    with pytest.raises(ValueError, match="frozen_stages"):
        freeze_backbone(build_backbone("tiny", (64, 64, 3)), norm_eval=False, frozen_stages=stages)
