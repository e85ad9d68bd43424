"""torchvision / timm ResNet checkpoint import: parity with torchvision's own features on the
golden fixture (resnet/ under $SOLO_GOLDEN_DIR), file formats, and errors that name the key."""

import json
import struct
import sys

import keras
import numpy as np
import pytest

from conftest import golden_dir
from solo_tf.backbones import build_backbone
from solo_tf.weights import load_torchvision_resnet, read_state_dict, torchvision_key

RESNET_DIR = golden_dir() / "resnet"
LEVELS = ("C2", "C3", "C4", "C5")
needs_fixture = pytest.mark.skipif(
    not RESNET_DIR.is_dir(), reason=f"golden ResNet fixture not found: {RESNET_DIR} (set SOLO_GOLDEN_DIR)"
)


def _make_state_dict(arch):
    """The fixture's deterministic stand-in weights for ``arch``, as torchvision names them."""
    sys.path.insert(0, str(RESNET_DIR))
    try:
        from torchvision_weights import make_state_dict
    finally:
        sys.path.remove(str(RESNET_DIR))
    spec = json.loads((RESNET_DIR / f"{arch}_state_dict_spec.json").read_text())
    return make_state_dict(spec)


def write_safetensors(path, state):
    """``state`` as a .safetensors file (the safetensors package's numpy writer)."""
    import safetensors.numpy

    safetensors.numpy.save_file({k: np.asarray(v) for k, v in state.items()}, str(path), metadata={"format": "pt"})
    return path


def _write(path, state):
    if str(path).endswith(".npz"):
        np.savez(path, **state)
    else:
        write_safetensors(path, state)
    return path


_MODELS = {}


def _model(arch, shape):
    """One built backbone per (arch, input shape) per session: building resnet101 takes seconds."""
    key = (arch, tuple(shape))
    if key not in _MODELS:
        _MODELS[key] = build_backbone(arch, shape)
    return _MODELS[key]


def _scramble(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))


@needs_fixture
@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_parity_with_torchvision(tmp_path, arch, fmt):
    ref = np.load(RESNET_DIR / f"{arch}_features.npz")
    x = ref["input_nchw"].transpose(0, 2, 3, 1)  # (2, 64, 96, 3)
    path = _write(tmp_path / f"{arch}.{fmt}", _make_state_dict(arch))
    model = _model(arch, x.shape[1:])
    _scramble(model)  # every weight must come from the file
    load_torchvision_resnet(model, path)
    out = model(x, training=False)
    for level in LEVELS:
        ours = keras.ops.convert_to_numpy(out[level]).transpose(0, 3, 1, 2)
        assert ours.shape == ref[level].shape, level
        err = np.abs(ours - ref[level]).max()
        assert err <= 1e-4 * np.abs(ref[level]).max(), f"{arch} {level}: max error {err}"


@needs_fixture
def test_build_backbone_takes_a_checkpoint_path(tmp_path):
    ref = np.load(RESNET_DIR / "resnet18_features.npz")
    x = ref["input_nchw"].transpose(0, 2, 3, 1)
    path = _write(tmp_path / "resnet18.tv_in1k.safetensors", _make_state_dict("resnet18"))
    model = build_backbone("resnet18", x.shape[1:], weights=path)
    c5 = keras.ops.convert_to_numpy(model(x, training=False)["C5"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(c5, ref["C5"], atol=1e-4 * np.abs(ref["C5"]).max())


# --- errors -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r18():
    """resnet18 at 64x64 and a matching state dict in torchvision's names and layout."""
    model = build_backbone("resnet18", (64, 64, 3))
    state = {}
    for layer in model.layers:
        base = torchvision_key(layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            state[f"{base}.weight"] = keras.ops.convert_to_numpy(layer.kernel).transpose(3, 2, 0, 1)
        elif isinstance(layer, keras.layers.BatchNormalization):
            for leaf, var in (("weight", layer.gamma), ("bias", layer.beta),
                              ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
                state[f"{base}.{leaf}"] = keras.ops.convert_to_numpy(var) + 0.25
            state[f"{base}.num_batches_tracked"] = np.array(7, np.int64)
    state["fc.weight"], state["fc.bias"] = np.zeros((1000, 512), np.float32), np.zeros(1000, np.float32)
    return model, state


def _snapshot(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


def _unchanged(model, before):
    return all(np.array_equal(keras.ops.convert_to_numpy(v), b) for v, b in zip(model.weights, before))


def test_key_mapping_is_torchvision_names():
    assert torchvision_key("conv1") == "conv1"
    assert torchvision_key("bn1") == "bn1"
    assert torchvision_key("layer3_5_conv2") == "layer3.5.conv2"
    assert torchvision_key("layer4_0_downsample_conv") == "layer4.0.downsample.0"
    assert torchvision_key("layer4_0_downsample_bn") == "layer4.0.downsample.1"
    assert torchvision_key("layer3_22_bn3") == "layer3.22.bn3"


def test_matching_state_loads_and_ignores_only_fc_and_counters(r18):
    model, state = r18
    load_torchvision_resnet(model, state)
    bn = model.get_layer("layer2_0_downsample_bn")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_variance), state["layer2.0.downsample.1.running_var"])
    kernel = keras.ops.convert_to_numpy(model.get_layer("layer3_1_conv2").kernel)
    np.testing.assert_array_equal(kernel, state["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
    # A headless checkpoint without counters (timm features_only style) loads too.
    load_torchvision_resnet(model, {k: v for k, v in state.items() if not k.startswith("fc.") and "num_batches" not in k})


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize(
    "change,key",
    [
        ("drop", "layer2.0.bn1.running_var"),
        ("add", "layer5.0.conv1.weight"),
        ("add", "fc.extra"),
        ("reshape", "layer3.1.conv2.weight"),
        ("reshape", "bn1.bias"),
    ],
)
def test_mismatched_checkpoint_names_the_key_and_file(tmp_path, r18, fmt, change, key):
    model, state = r18
    state = dict(state)
    if change == "drop":
        del state[key]
    elif change == "add":
        state[key] = np.zeros(3, np.float32)
    else:
        state[key] = state[key].reshape(-1)[:-1].copy()
    path = _write(tmp_path / f"bad.{fmt}", state)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=rf"bad\.{fmt}.*'{key.replace('.', '[.]')}'") as e:
        load_torchvision_resnet(model, path)
    assert {"drop": "missing", "add": "unexpected", "reshape": "shape"}[change] in str(e.value)
    assert _unchanged(model, before), "a failed load must assign nothing"


def test_non_finite_weight_names_the_key(r18):
    model, state = r18
    state = dict(state, **{"layer1.0.conv1.weight": np.full_like(state["layer1.0.conv1.weight"], np.nan)})
    with pytest.raises(ValueError, match="layer1.0.conv1.weight.*NaN"):
        load_torchvision_resnet(model, state)


def test_corrupted_safetensors_name_the_file(tmp_path, r18):
    _, state = r18
    good = _write(tmp_path / "good.safetensors", state).read_bytes()
    (tmp_path / "short.safetensors").write_bytes(good[:5])
    (tmp_path / "header.safetensors").write_bytes(struct.pack("<Q", 10**9) + good[8:])
    (tmp_path / "json.safetensors").write_bytes(good[:8] + b"#" + good[9:])
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) - 4096])
    # a header entry whose dtype does not fit its bytes (F32 -> F16: the same header length)
    (tmp_path / "dtype.safetensors").write_bytes(good.replace(b'"F32"', b'"F16"', 1))
    for name in ("short", "header", "json", "cut", "dtype"):
        with pytest.raises(ValueError, match=rf"checkpoint .*{name}\.safetensors: not a readable safetensors file"):
            read_state_dict(tmp_path / f"{name}.safetensors")


def test_safetensors_dtypes_decode(tmp_path):
    import ml_dtypes

    f32 = np.array([[1.5, -2.25], [3.0e-3, 1e4]], np.float32)
    bf16 = np.array([1.0, -0.5, 3.140625, 256.0], np.float32)  # exactly representable in bfloat16
    state = {
        "f32": f32,
        "f16": f32.astype(np.float16),
        "i64": np.array(42, np.int64),
        "bf16": bf16.astype(ml_dtypes.bfloat16),
    }
    write_safetensors(tmp_path / "d.safetensors", state)
    got = read_state_dict(tmp_path / "d.safetensors")
    np.testing.assert_array_equal(got["f32"], f32)
    assert got["f16"].dtype == np.float16
    np.testing.assert_array_equal(got["f16"], f32.astype(np.float16))
    assert got["i64"].shape == () and int(got["i64"]) == 42
    assert got["bf16"].dtype == np.float32  # widened, exactly
    np.testing.assert_array_equal(got["bf16"], bf16)


def test_corrupted_npz_names_the_file(tmp_path, r18):
    _, state = r18
    good = _write(tmp_path / "good.npz", state).read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        read_state_dict(tmp_path / "cut.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(ValueError, match="single.npz.*not an .npz archive"):
        read_state_dict(tmp_path / "single.npz")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_checkpoint_without_torch(tmp_path, r18, legacy):
    """A torch.save'd {"state_dict": {"module." + key: tensor}} (both serializations) loads
    through solo_tf.pth: no PyTorch needed."""
    from pth_writer import write_pth

    model, state = r18
    path = write_pth(tmp_path / "resnet18.pth", {"state_dict": {f"module.{k}": v for k, v in state.items()}},
                     legacy=legacy)
    load_torchvision_resnet(model, path)
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv1").kernel)
    np.testing.assert_array_equal(kernel, state["conv1.weight"].transpose(2, 3, 1, 0))


def test_prefix_takes_the_backbone_out_of_a_detector_checkpoint(r18):
    model, state = r18
    detector = {f"backbone.{k}": v for k, v in state.items()}
    detector["neck.lateral_convs.0.conv.weight"] = np.zeros((256, 64, 1, 1), np.float32)
    with pytest.raises(ValueError, match="unexpected.*'backbone.conv1.weight'"):
        load_torchvision_resnet(model, detector)
    load_torchvision_resnet(model, detector, prefix="backbone.")
    with pytest.raises(ValueError, match="no key starts with the prefix 'bottom_up.'"):
        load_torchvision_resnet(model, detector, prefix="bottom_up.")


def test_checkpoints_fit_resnets_only(tmp_path, r18):
    _, state = r18
    path = _write(tmp_path / "w.npz", state)
    for name in ("tiny", "mobilenetv3_small"):
        with pytest.raises(ValueError, match=f"w.npz.*not '{name}'"):
            build_backbone(name, (64, 64, 3), weights=path)
    other = tmp_path / "w.ckpt"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="w.ckpt.*safetensors"):
        build_backbone("resnet18", (64, 64, 3), weights=other)


def test_depth_mismatch_is_reported(tmp_path, r18):
    """A resnet18 checkpoint given to resnet34: the extra blocks of resnet34 are missing keys."""
    _, state = r18
    path = _write(tmp_path / "r18.safetensors", state)
    with pytest.raises(ValueError, match=r"r18.safetensors.*missing key\(s\): 'layer1.2.bn1.bias'"):
        build_backbone("resnet34", (64, 64, 3), weights=path)
