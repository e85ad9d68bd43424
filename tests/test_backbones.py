import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from solo_tf.backbones import BACKBONE_CHANNELS, BACKBONES, backbone_channels, build_backbone
from solo_tf.config import BACKBONES as CONFIG_BACKBONES


REPO = Path(__file__).resolve().parents[1]
STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
# keras.applications backbones are large: build at 64x64 and run one image only.
SMALL_INPUT = {"resnet50", "resnet101", "mobilenetv3_small", "mobilenetv3_large"}


def test_names_match_config():
    assert set(BACKBONES) == set(CONFIG_BACKBONES)


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


def _torchvision_basic_resnet_params(blocks):
    """Parameter count of torchvision's BasicBlock ResNet without fc (conv weights + BN affine)."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731 - bias=False everywhere
    bn = lambda c: 2 * c  # noqa: E731 - running stats are buffers, not parameters
    total = conv(3, 64, 7) + bn(64)
    cin = 64
    for stage, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for b in range(n):
            total += conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
            if stage > 0 and b == 0:
                total += conv(cin, cout, 1) + bn(cout)
            cin = cout
    return total


@pytest.mark.parametrize("name,blocks", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_basic_resnet_parameter_count_matches_torchvision(name, blocks):
    model = build_backbone(name, (64, 64, 3))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == _torchvision_basic_resnet_params(blocks)
    if name == "resnet18":
        # torchvision resnet18: 11,689,512 parameters, of which fc is 512 * 1000 + 1000.
        assert trainable == 11_689_512 - 513_000 == 11_176_512


def test_basic_resnet_uses_torchvision_names():
    model = build_backbone("resnet18", (64, 64, 3))
    names = {layer.name for layer in model.layers}
    for n in ("conv1", "bn1", "layer1_1_conv2", "layer2_0_downsample_conv", "layer4_1_bn2"):
        assert n in names


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


@pytest.mark.parametrize("name", ["tiny", "resnet18", "resnet34"])
def test_imagenet_for_our_resnets_raises(name):
    with pytest.raises(ValueError, match="no ImageNet weights.*local"):
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


@pytest.mark.parametrize("name,ctor", [("resnet50", "ResNet50"), ("mobilenetv3_small", "MobileNetV3Small")])
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
    if name.startswith("mobilenet"):
        assert calls[0]["include_preprocessing"] is False and calls[0]["minimalistic"] is False
    assert sorted(model.output) == ["C2", "C3", "C4", "C5"]


def test_imagenet_download_failure_is_explained(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.applications, "ResNet101", offline)
    with pytest.raises(RuntimeError, match="resnet101.*weights.h5"):
        build_backbone("resnet101", (64, 64, 3), weights="imagenet")
