"""Reference (WXinlong/SOLO, mmdetection 1.x) checkpoint import: a synthetic checkpoint
written with the reference's key names and shapes lands where it should, mismatches fail
naming the key, the class count may differ only with strict=False, and model.init_weights
reaches the model through solo_tf.tasks.train.

The synthetic checkpoints are written from the reference's own module definitions
(mmdet ResNet, FPN, ConvModule(conv, gn), SOLOv2Head, MaskFeatHead, SOLOHead,
DecoupledSOLOHead), not from solo_tf's mapping."""

import dataclasses
import types

import keras
import numpy as np
import pytest

from solo_tf.config import Config, ConfigError, ModelConfig, section_from_dict
from solo_tf.variants import check_model_config
from solo_tf.reference_weights import (
    REFERENCE_COCO_CATEGORY_IDS,
    describe_reference_checkpoint,
    load_reference_checkpoint,
)

FPN, HEAD, STACKED, MASK_FEAT, E, CLASSES = 32, 32, 2, 32, 32, 3
GRIDS = (8, 6, 4, 3, 2)
R18_BLOCKS, R18_CHANNELS = (2, 2, 2, 2), (64, 128, 256, 512)


def model_config(variant, **overrides):
    kw = dict(variant=variant, backbone="resnet18", num_classes=CLASSES, image_size=(64, 64), fpn_channels=FPN,
              num_grids=GRIDS, head_channels=HEAD, stacked_convs=STACKED, mask_feature_channels=MASK_FEAT,
              mask_channels=E, norm_groups=32)
    kw.update(overrides)
    return check_model_config(ModelConfig(**kw))


def reference_state(variant, *, classes=CLASSES, stacked=STACKED, blocks=R18_BLOCKS, seed=0, layout="mmdet1"):
    """A state dict as WXinlong/SOLO (``layout="mmdet1"``) or mmdetection 2.x/3.x
    (``"mmdet2"``) names it, shapes from the reference's constructors. Both layouts draw the
    same values in the same order, so a seed gives the same weights under either's names."""
    rng = np.random.default_rng(seed)
    state = {}
    mm2 = layout == "mmdet2"

    def n(mmdet1, mmdet2):  # a module's name in each reference (mmdet 1.x WXinlong, mmdet 2.x/3.x)
        return mmdet2 if mm2 else mmdet1

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def conv(name, cout, cin, k, bias):  # nn.Conv2d: weight (out, in, k, k), bias (out,)
        state[f"{name}.weight"] = rand(cout, cin, k, k)
        if bias:
            state[f"{name}.bias"] = rand(cout)

    def bn(name, c):  # nn.BatchNorm2d
        state[f"{name}.weight"], state[f"{name}.bias"], state[f"{name}.running_mean"] = rand(c), rand(c), rand(c)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(1000, np.int64)

    def conv_module(name, cout, cin, k=3):  # ConvModule(norm_cfg=GN): conv without bias, then "gn"
        conv(f"{name}.conv", cout, cin, k, False)
        state[f"{name}.gn.weight"], state[f"{name}.gn.bias"] = rand(cout), rand(cout)

    # mmdet ResNet (BasicBlock, style pytorch): stem conv1/bn1, layer{s}.{b}.conv{1,2}/bn{1,2},
    # downsample = Sequential(conv 1x1, BN) where the stride or the width changes
    conv("backbone.conv1", 64, 3, 7, False)
    bn("backbone.bn1", 64)
    inplanes = 64
    for s, count in enumerate(blocks, start=1):
        planes = 64 * 2 ** (s - 1)
        for b in range(count):
            p = f"backbone.layer{s}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 3, False)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3, False)
            bn(f"{p}.bn2", planes)
            if b == 0 and (s > 1 or inplanes != planes):
                conv(f"{p}.downsample.0", planes, inplanes, 1, False)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    # FPN: ConvModule without norm or activation -> conv with bias (same names in both)
    for i, c in enumerate(R18_CHANNELS):
        conv(f"neck.lateral_convs.{i}.conv", FPN, c, 1, True)
        conv(f"neck.fpn_convs.{i}.conv", FPN, FPN, 3, True)
    if variant == "solov2":
        # SOLOv2Head / mmdet 2.x SOLOV2Head: kernel and category towers built in one loop
        for i in range(stacked):
            conv_module(n(f"bbox_head.kernel_convs.{i}", f"mask_head.kernel_convs.{i}"), HEAD,
                        FPN + 2 if i == 0 else HEAD)  # + x, y
            conv_module(n(f"bbox_head.cate_convs.{i}", f"mask_head.cls_convs.{i}"), HEAD, FPN if i == 0 else HEAD)
        conv(n("bbox_head.solo_cate", "mask_head.conv_cls"), classes, HEAD, 3, True)
        conv(n("bbox_head.solo_kernel", "mask_head.conv_kernel"), E, HEAD, 3, True)
        # MaskFeatHead / mmdet 2.x MaskFeatModule (mask_head.mask_feature_head), start_level=0,
        # end_level=3: level 0 one conv; level i >= 1 i convs, the first of level 3 with 2
        # coordinate channels; conv_pred: a 1x1 ConvModule to E (mmdet 1.x: in a Sequential)
        feat = n("mask_feat_head", "mask_head.mask_feature_head")
        conv_module(f"{feat}.convs_all_levels.0.conv0", MASK_FEAT, FPN)
        for i in (1, 2, 3):
            for j in range(i):
                cin = (FPN + 2 if i == 3 else FPN) if j == 0 else MASK_FEAT
                conv_module(f"{feat}.convs_all_levels.{i}.conv{j}", MASK_FEAT, cin)
        conv_module(n("mask_feat_head.conv_pred.0", "mask_head.mask_feature_head.conv_pred"), E, MASK_FEAT, k=1)
    elif variant == "solo":
        # SOLOHead: mask tower ins_convs / mask_convs (+ x, y), category tower, per-level 1x1 to S^2
        for i in range(stacked):
            conv_module(n(f"bbox_head.ins_convs.{i}", f"mask_head.mask_convs.{i}"), HEAD, FPN + 2 if i == 0 else HEAD)
            conv_module(n(f"bbox_head.cate_convs.{i}", f"mask_head.cls_convs.{i}"), HEAD, FPN if i == 0 else HEAD)
        for l, g in enumerate(GRIDS):
            conv(n(f"bbox_head.solo_ins_list.{l}", f"mask_head.conv_mask_list.{l}"), g * g, HEAD, 1, True)
        conv(n("bbox_head.solo_cate", "mask_head.conv_cls"), classes, HEAD, 3, True)
    else:  # DecoupledSOLOHead: X and Y towers (+ x / + y), per-level 3x3 to S each
        for i in range(stacked):
            conv_module(n(f"bbox_head.ins_convs_x.{i}", f"mask_head.mask_convs_x.{i}"), HEAD,
                        FPN + 1 if i == 0 else HEAD)
            conv_module(n(f"bbox_head.ins_convs_y.{i}", f"mask_head.mask_convs_y.{i}"), HEAD,
                        FPN + 1 if i == 0 else HEAD)
            conv_module(n(f"bbox_head.cate_convs.{i}", f"mask_head.cls_convs.{i}"), HEAD, FPN if i == 0 else HEAD)
        for l, g in enumerate(GRIDS):
            conv(n(f"bbox_head.dsolo_ins_list_x.{l}", f"mask_head.conv_mask_list_x.{l}"), g, HEAD, 3, True)
            conv(n(f"bbox_head.dsolo_ins_list_y.{l}", f"mask_head.conv_mask_list_y.{l}"), g, HEAD, 3, True)
        conv(n("bbox_head.dsolo_cate", "mask_head.conv_cls"), classes, HEAD, 3, True)
    return state


def write_safetensors(path, state):
    """``state`` as a .safetensors file (test_weights.py's writer, from the format description)."""
    from test_weights import write_safetensors as write

    write(path, state)
    return path


def np_(v):
    return keras.ops.convert_to_numpy(v)


def hwio(w):
    return w.transpose(2, 3, 1, 0)


def assert_every_tensor_landed_once(model, state):
    """Each model weight equals exactly one checkpoint tensor (conv weights transposed) and
    every checkpoint tensor but the BN counters is used once."""
    lookup = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        arr = hwio(value) if value.ndim == 4 else value
        lookup[(arr.shape, np.ascontiguousarray(arr).tobytes())] = key
    used = []
    for w in model.weights:
        value = np.ascontiguousarray(np_(w))
        key = lookup.get((value.shape, value.tobytes()))
        assert key is not None, f"{w.path} holds no checkpoint tensor"
        used.append(key)
    assert sorted(used) == sorted(lookup.values())


@pytest.fixture(scope="module")
def v2():
    from solo_tf.model import SOLO

    return SOLO(model_config("solov2"))


def test_solov2_checkpoint_lands_where_the_reference_has_it(tmp_path, v2):
    state = reference_state("solov2")
    report = load_reference_checkpoint(v2, write_safetensors(tmp_path / "solov2.safetensors", state))
    assert report.loaded == len(v2.weights) and report.skipped == ()
    assert "solov2.safetensors" in str(report)
    assert_every_tensor_landed_once(v2, state)

    backbone, fpn = v2.get_layer("backbone"), v2.get_layer("fpn")
    head, feat = v2.get_layer("head"), v2.get_layer("mask_feature_head")
    np.testing.assert_array_equal(np_(backbone.get_layer("conv1").kernel), hwio(state["backbone.conv1.weight"]))
    np.testing.assert_array_equal(np_(backbone.get_layer("layer2_0_downsample_bn").moving_variance),
                                  state["backbone.layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(np_(fpn.lateral_convs[2].kernel), hwio(state["neck.lateral_convs.2.conv.weight"]))
    np.testing.assert_array_equal(np_(fpn.output_convs[3].bias), state["neck.fpn_convs.3.conv.bias"])
    # CoordConv: input channel FPN is x, FPN + 1 is y, in both
    k = np_(head.kernel_convs[0].conv.kernel)
    w = state["bbox_head.kernel_convs.0.conv.weight"]
    assert k.shape == (3, 3, FPN + 2, HEAD)
    np.testing.assert_array_equal(k[1, 2, FPN, 5], w[5, FPN, 1, 2])
    np.testing.assert_array_equal(k[0, 1, FPN + 1, 7], w[7, FPN + 1, 0, 1])
    np.testing.assert_array_equal(np_(head.kernel_convs[1].norm.gamma), state["bbox_head.kernel_convs.1.gn.weight"])
    np.testing.assert_array_equal(np_(head.cate_convs[0].norm.beta), state["bbox_head.cate_convs.0.gn.bias"])
    np.testing.assert_array_equal(np_(head.kernel_out.kernel), hwio(state["bbox_head.solo_kernel.weight"]))
    np.testing.assert_array_equal(np_(head.cate_out.bias), state["bbox_head.solo_cate.bias"])
    level3 = {u.name: u for u in feat.convs}["level3_conv0"]
    np.testing.assert_array_equal(np_(level3.conv.kernel),
                                  hwio(state["mask_feat_head.convs_all_levels.3.conv0.conv.weight"]))
    np.testing.assert_array_equal(np_({u.name: u for u in feat.convs}["level2_conv1"].norm.gamma),
                                  state["mask_feat_head.convs_all_levels.2.conv1.gn.weight"])
    np.testing.assert_array_equal(np_(feat.out_conv.kernel), hwio(state["mask_feat_head.conv_pred.0.conv.weight"]))
    np.testing.assert_array_equal(np_(feat.out_norm.beta), state["mask_feat_head.conv_pred.0.gn.bias"])
    # the reference's grids are not in the weights: noted, not refused
    assert any("num_grids" in n for n in report.notes)


def test_npz_and_wrapped_state_dicts_load(tmp_path, v2):
    state = reference_state("solov2", seed=1)
    np.savez(tmp_path / "w.npz", **{f"state_dict.{k}": v for k, v in state.items()})
    load_reference_checkpoint(v2, tmp_path / "w.npz")
    np.testing.assert_array_equal(np_(v2.get_layer("head").cate_out.kernel), hwio(state["bbox_head.solo_cate.weight"]))
    state = reference_state("solov2", seed=2)
    load_reference_checkpoint(v2, {"meta": {}, "state_dict": {f"module.{k}": v for k, v in state.items()}})
    np.testing.assert_array_equal(np_(v2.get_layer("fpn").lateral_convs[0].bias),
                                  state["neck.lateral_convs.0.conv.bias"])


def _snapshot(model):
    return {w.path: np_(w).copy() for w in (model.get_layer("head").cate_out.kernel,
                                            model.get_layer("backbone").get_layer("conv1").kernel)}


def _unchanged(model, before):
    return all(np.array_equal(np_(w), before[w.path]) for w in (model.get_layer("head").cate_out.kernel,
                                                                model.get_layer("backbone").get_layer("conv1").kernel))


@pytest.mark.parametrize("change, match", [
    ("missing", r"1 missing key\(s\): 'mask_feat_head.conv_pred.0.gn.bias'"),
    ("unexpected", r"1 unexpected key\(s\): 'bbox_head.solo_mask.weight'"),
    ("shape", r"'bbox_head.kernel_convs.1.gn.weight' has shape \[33\], the model needs \[32\]"),
    ("backbone", r"backbone.*missing key\(s\): 'layer3.1.bn2.running_var'"),
    ("nan", r"'neck.fpn_convs.0.conv.weight' holds NaN"),
])
def test_mismatches_fail_naming_the_key_and_assign_nothing(tmp_path, v2, change, match):
    state = reference_state("solov2", seed=3)
    if change == "missing":
        del state["mask_feat_head.conv_pred.0.gn.bias"]
    elif change == "unexpected":
        state["bbox_head.solo_mask.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    elif change == "shape":
        state["bbox_head.kernel_convs.1.gn.weight"] = np.zeros(33, np.float32)
    elif change == "backbone":
        del state["backbone.layer3.1.bn2.running_var"]
    else:
        state["neck.fpn_convs.0.conv.weight"][0, 0, 0, 0] = np.nan
    before = _snapshot(v2)
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    with pytest.raises(ValueError, match=match) as err:
        load_reference_checkpoint(v2, path)
    assert "bad.npz" in str(err.value)
    assert _unchanged(v2, before)


def test_errors_say_which_config_the_checkpoint_wants(v2):
    with pytest.raises(ValueError, match=r"'bbox_head.kernel_convs.2.conv.weight'.*model.stacked_convs: 3 "
                                         r"\(the model has 2\)"):
        load_reference_checkpoint(v2, reference_state("solov2", stacked=3))
    with pytest.raises(ValueError, match="checkpoint is a solo model.*set model.variant: solo"):
        load_reference_checkpoint(v2, reference_state("solo"))
    with pytest.raises(ValueError, match="backbone is resnet34.*set model.backbone: resnet34"):
        load_reference_checkpoint(v2, reference_state("solov2", blocks=(3, 4, 6, 3)))
    dcn = reference_state("solov2")
    dcn["bbox_head.kernel_convs.1.conv.conv_offset.weight"] = np.zeros((18, HEAD, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"DCN.*'bbox_head.kernel_convs.1.conv.conv_offset.weight'"):
        load_reference_checkpoint(v2, dcn)
    light = reference_state("decoupled_solo")
    light["bbox_head.ins_convs.0.conv.weight"] = np.zeros((HEAD, FPN + 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="Decoupled SOLO light"):
        load_reference_checkpoint(v2, light)
    cfg = v2.model_config
    for other, match in ((dict(norm_groups=16), "32 groups.*norm_groups is 16"),
                         (dict(backbone="tiny"), "model.backbone is 'tiny'")):
        fake = types.SimpleNamespace(model_config=dataclasses.replace(cfg, **other))
        with pytest.raises(ValueError, match=match):
            load_reference_checkpoint(fake, reference_state("solov2"))


def test_describe_reads_the_config_from_the_shapes():
    found = describe_reference_checkpoint(reference_state("solov2", classes=80))
    assert {k: found[k] for k in ("variant", "backbone", "fpn_channels", "head_channels", "stacked_convs",
                                  "num_classes", "mask_channels", "mask_feature_channels")} == dict(
        variant="solov2", backbone="resnet18", fpn_channels=FPN, head_channels=HEAD, stacked_convs=STACKED,
        num_classes=80, mask_channels=E, mask_feature_channels=MASK_FEAT)
    assert describe_reference_checkpoint(reference_state("solo"))["num_grids"] == GRIDS
    assert describe_reference_checkpoint(reference_state("decoupled_solo"))["num_grids"] == GRIDS
    assert len(REFERENCE_COCO_CATEGORY_IDS) == 80 and list(REFERENCE_COCO_CATEGORY_IDS) == sorted(
        set(REFERENCE_COCO_CATEGORY_IDS)) and REFERENCE_COCO_CATEGORY_IDS[-1] == 90


def test_class_count_strict_and_not(v2):
    coco = reference_state("solov2", classes=80, seed=4)
    with pytest.raises(ValueError, match=r"'bbox_head.solo_cate.weight' has shape \[80, 32, 3, 3\], the model needs "
                                         r"\[3, 32, 3, 3\].*strict=False"):
        load_reference_checkpoint(v2, coco)
    cate = v2.get_layer("head").cate_out
    cate.kernel.assign(np.full(cate.kernel.shape, 0.5, np.float32))
    report = load_reference_checkpoint(v2, coco, strict=False)
    assert report.skipped == ("bbox_head.solo_cate.weight", "bbox_head.solo_cate.bias")
    assert report.checkpoint_num_classes == 80 and report.loaded == len(v2.weights) - 2
    assert "80 classes, the model 3" in str(report)
    np.testing.assert_array_equal(np_(cate.kernel), 0.5)  # kept
    np.testing.assert_array_equal(np_(v2.get_layer("head").kernel_out.bias), coco["bbox_head.solo_kernel.bias"])
    # strict=False relaxes nothing else
    coco["bbox_head.kernel_convs.0.gn.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="'bbox_head.kernel_convs.0.gn.bias' has shape"):
        load_reference_checkpoint(v2, coco, strict=False)


@pytest.mark.parametrize("variant", ["solo", "decoupled_solo"])
def test_solo_and_decoupled_solo_checkpoints(variant):
    from solo_tf.model import SOLO

    model = SOLO(model_config(variant))
    state = reference_state(variant, seed=5)
    report = load_reference_checkpoint(model, state)
    assert report.loaded == len(model.weights)
    assert_every_tensor_landed_once(model, state)
    head = model.get_layer("head")
    if variant == "solo":
        np.testing.assert_array_equal(np_(head.mask_convs[0].conv.kernel),
                                      hwio(state["bbox_head.ins_convs.0.conv.weight"]))
        np.testing.assert_array_equal(np_(head.mask_out[4].bias), state["bbox_head.solo_ins_list.4.bias"])
    else:
        np.testing.assert_array_equal(np_(head.mask_convs_y[0].conv.kernel),
                                      hwio(state["bbox_head.ins_convs_y.0.conv.weight"]))
        np.testing.assert_array_equal(np_(head.mask_out_x[2].kernel),
                                      hwio(state["bbox_head.dsolo_ins_list_x.2.weight"]))
        np.testing.assert_array_equal(np_(head.cate_out.bias), state["bbox_head.dsolo_cate.bias"])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_checkpoint_without_torch(tmp_path, v2, legacy):
    """An mmdet {"meta", "state_dict"} .pth, in the zip and the legacy (2020) serialization."""
    from pth_writer import write_pth

    state = reference_state("solov2", seed=6)
    path = write_pth(tmp_path / "solov2_r18.pth", {"meta": {"epoch": 36}, "state_dict": state}, legacy=legacy)
    load_reference_checkpoint(v2, path)
    np.testing.assert_array_equal(np_(v2.get_layer("head").kernel_out.kernel),
                                  hwio(state["bbox_head.solo_kernel.weight"]))


# --- mmdetection 2.x/3.x layout ------------------------------------------------------------------


def _weights(model):
    return [np_(w).copy() for w in model.weights]


@pytest.mark.parametrize("variant", ["solov2", "solo", "decoupled_solo"])
def test_mmdet2_checkpoint_loads_as_the_equivalent_wxinlong_file(tmp_path, v2, variant):
    """mmdet 2.x names, {meta, state_dict}, zip .pth: every weight lands where the WXinlong
    file with the same values puts it."""
    from pth_writer import write_pth
    from solo_tf.model import SOLO

    model = v2 if variant == "solov2" else SOLO(model_config(variant))
    wx = reference_state(variant, seed=11)
    load_reference_checkpoint(model, wx)
    want = _weights(model)
    load_reference_checkpoint(model, reference_state(variant, seed=12))  # something else in between
    mm = reference_state(variant, seed=11, layout="mmdet2")
    assert not set(mm) & {k for k in wx if not k.startswith(("backbone.", "neck."))}  # other names
    path = write_pth(tmp_path / "mmdet2.pth", {"meta": {"mmdet_version": "2.25.0", "CLASSES": ("a", "b", "c")},
                                               "state_dict": mm})
    report = load_reference_checkpoint(model, path)
    assert report.loaded == len(model.weights)
    for got, expected, var in zip(_weights(model), want, model.weights):
        np.testing.assert_array_equal(got, expected, err_msg=var.path)
    assert_every_tensor_landed_once(model, wx)
    found = describe_reference_checkpoint(mm)
    assert found.pop("layout") == "mmdet2" and describe_reference_checkpoint(wx).pop("layout") == "mmdet1"
    assert {k: v for k, v in found.items() if k != "variant_key"} == {
        k: v for k, v in describe_reference_checkpoint(wx).items() if k not in ("variant_key", "layout")}


def test_mmdet2_errors_name_the_keys_as_the_file_has_them(v2):
    mm = reference_state("solov2", seed=13, layout="mmdet2")
    del mm["mask_head.mask_feature_head.conv_pred.gn.bias"]
    with pytest.raises(ValueError, match=r"mmdetection 2.x/3.x checkpoint.*1 missing key\(s\): "
                                         r"'mask_head.mask_feature_head.conv_pred.gn.bias'"):
        load_reference_checkpoint(v2, mm)
    coco = reference_state("solov2", classes=80, seed=14, layout="mmdet2")
    with pytest.raises(ValueError, match=r"'mask_head.conv_cls.weight' has shape \[80, 32, 3, 3\]"):
        load_reference_checkpoint(v2, coco)
    report = load_reference_checkpoint(v2, coco, strict=False)
    assert report.skipped == ("mask_head.conv_cls.weight", "mask_head.conv_cls.bias")
    np.testing.assert_array_equal(np_(v2.get_layer("head").kernel_out.bias), coco["mask_head.conv_kernel.bias"])
    dcn = reference_state("solov2", layout="mmdet2")
    dcn["mask_head.kernel_convs.1.conv.conv_offset.weight"] = np.zeros((18, HEAD, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"DCN.*'mask_head.kernel_convs.1.conv.conv_offset.weight'"):
        load_reference_checkpoint(v2, dcn)
    with pytest.raises(ValueError, match=r"checkpoint is a solo model \('mask_head.conv_mask_list.0.weight'\)"):
        load_reference_checkpoint(v2, reference_state("solo", layout="mmdet2"))


def test_mmdet2_decoupled_solo_light_is_refused_naming_the_key():
    """DecoupledSOLOLightHead: one mask tower 'mask_convs' (features + x + y) feeding both
    conv_mask_list_x and _y; solo_tf's Decoupled SOLO has no place for it."""
    from solo_tf.model import SOLO

    light = {k: v for k, v in reference_state("decoupled_solo", layout="mmdet2").items()
             if not k.startswith(("mask_head.mask_convs_x.", "mask_head.mask_convs_y."))}
    rng = np.random.default_rng(0)
    for i in range(STACKED):
        light[f"mask_head.mask_convs.{i}.conv.weight"] = rng.standard_normal(
            (HEAD, FPN + 2 if i == 0 else HEAD, 3, 3)).astype(np.float32)
        light[f"mask_head.mask_convs.{i}.gn.weight"] = np.ones(HEAD, np.float32)
        light[f"mask_head.mask_convs.{i}.gn.bias"] = np.zeros(HEAD, np.float32)
    model = SOLO(model_config("decoupled_solo"))
    with pytest.raises(ValueError, match=rf"Decoupled SOLO light.*'mask_head.mask_convs.0.conv.weight' is one mask "
                                         rf"tower of {FPN + 2} inputs"):
        load_reference_checkpoint(model, light)


def test_foreign_checkpoint_names_its_first_key_and_the_zoo_entries(v2):
    state = reference_state("solov2", seed=15)
    adelaidet = {k: v for k, v in state.items() if k.startswith("backbone.layer1.")}  # these fit a ResNet
    adelaidet["backbone.bottom_up.stem.conv1.weight"] = np.zeros((64, 3, 7, 7), np.float32)
    adelaidet["ins_head.cate_tower.0.weight"] = np.zeros((HEAD, FPN, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'backbone.bottom_up.stem.conv1.weight' fits no SOLO checkpoint.*"
                                         r"AdelaiDet.*solov2_light_r18, mmdet_solov2_light_r18"):
        load_reference_checkpoint(v2, adelaidet)
    classifier = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    with pytest.raises(ValueError, match=r"'conv1.weight' fits no SOLO checkpoint"):
        load_reference_checkpoint(v2, classifier)


# --- model.init_weights ------------------------------------------------------------------------


def test_init_weights_config_field():
    cfg = model_config("solov2", init_weights="coco/SOLOv2_R18.pth")
    assert cfg.pretrained and cfg.effective_norm_eval and cfg.effective_frozen_stages == 1
    assert section_from_dict(ModelConfig, {"init_weights": "x.npz"}, "model").init_weights == "x.npz"
    for bad, match in ((dict(init_weights="w.h5"), "must be a reference checkpoint file"),
                       (dict(init_weights=""), "file path or null"),
                       (dict(init_weights="w.pth", backbone="tiny", norm_groups=8), "ResNet backbone"),
                       (dict(init_weights="w.pth", backbone_weights="r18.pth"), "backbone_weights to null")):
        with pytest.raises(ConfigError, match=match):
            model_config("solov2", **bad)


def test_saved_config_does_not_reload_init_weights(v2):
    cfg = v2.model_config
    v2.model_config = dataclasses.replace(cfg, init_weights="/somewhere/SOLOv2_R18.pth")
    try:
        saved = v2.get_config()["model_config"]
    finally:
        v2.model_config = cfg
    assert saved["init_weights"] is None and saved["backbone_weights"] is None
    assert saved["norm_eval"] is True and saved["frozen_stages"] == 1  # the freezing it trained with


def test_train_applies_init_weights_to_a_fresh_model(tmp_path, v2, monkeypatch):
    """solo_tf.tasks.train: after the model is built and compiled, before fit, strict=False."""
    import solo_tf.data.pipeline
    import solo_tf.model
    from solo_tf import tasks

    state = reference_state("solov2", classes=80, seed=7)
    path = write_safetensors(tmp_path / "coco.safetensors", state)
    config = Config(model=dataclasses.replace(v2.model_config, init_weights=str(path)))
    config.train.targets_in = "model"
    with pytest.raises(FileNotFoundError, match="model.init_weights.*nowhere.pth"):
        tasks.train(Config(model=dataclasses.replace(v2.model_config, init_weights="nowhere.pth")), tmp_path / "r0")

    class Stop(Exception):
        pass

    lines, reports = [], []

    def apply_then_stop(model, p, log=None):
        assert model is v2 and model.optimizer is not None  # built and compiled
        reports.append(real_apply(model, p, log=log))
        raise Stop

    real_apply = tasks.apply_init_weights
    monkeypatch.setattr(tasks, "apply_init_weights", apply_then_stop)
    monkeypatch.setattr(solo_tf.data.pipeline, "build_datasets", lambda cfg: (None, None, {"num_train": 4}))
    monkeypatch.setattr(solo_tf.model, "SOLO", lambda *a, **k: v2)
    with pytest.raises(Stop):
        tasks.train(config, tmp_path / "run", log=lines.append)
    assert reports[0].skipped == ("bbox_head.solo_cate.weight", "bbox_head.solo_cate.bias")
    assert any("model.init_weights: loaded" in line and "80 classes" in line for line in lines)
    np.testing.assert_array_equal(np_(v2.get_layer("head").kernel_out.kernel),
                                  hwio(state["bbox_head.solo_kernel.weight"]))
