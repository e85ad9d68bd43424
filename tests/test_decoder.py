"""Decoder: hand-made raw outputs per variant, empty input, a numpy reference of the
published pipeline on random logits, TF vs JAX, and the host-side resize to the original size."""

import os
import subprocess
import sys

import numpy as np
import pytest
from keras import ops

from conftest import REPO, tiny_model_config
from solo_tf.config import PostprocessConfig
from solo_tf.decoder import binarize, decode, masks_to_boxes, points_nms, postprocess_image, resize_bilinear

H = W = 64
NEG = -12.0


def _np(d):
    return {k: ops.convert_to_numpy(v) for k, v in d.items()}


def _empty_outputs(cfg, rng=None):
    """Raw outputs of batch 1, every logit very negative (nothing anywhere)."""
    out = {}
    for l, (s, st) in enumerate(zip(cfg.num_grids, cfg.strides)):
        out[f"category_{l}"] = np.full((1, s, s, cfg.num_classes), NEG, np.float32)
        m = H // (st // 2)
        if cfg.variant == "solov2":
            out[f"kernel_{l}"] = np.zeros((1, s, s, 2), np.float32)
        elif cfg.variant == "solo":
            out[f"mask_{l}"] = np.full((1, m, m, s * s), NEG, np.float32)
        else:
            out[f"mask_x_{l}"] = np.full((1, m, m, s), NEG, np.float32)
            out[f"mask_y_{l}"] = np.full((1, m, m, s), NEG, np.float32)
    if cfg.variant == "solov2":
        out["mask_feature"] = np.zeros((1, H // 4, W // 4, 2), np.float32)
    return out


# The object: rows 4..8, cols 6..11 at stride 4 (input pixels rows 16..32, cols 24..44).
R0, R1, C0, C1 = 4, 8, 6, 11


def _object_outputs(variant, cells, logits, cls=1):
    """One object whose mask is predicted at level-0 cells ``cells`` [(i, j)] with category
    logits ``logits``; SOLOv2 / SOLO / Decoupled variants of the same picture."""
    cfg = tiny_model_config(variant, image_size=(H, W))
    out = _empty_outputs(cfg)
    s = cfg.num_grids[0]
    inside = np.full((H // 4, W // 4), -1.0, np.float32)
    inside[R0:R1, C0:C1] = 1.0
    for (i, j), logit in zip(cells, logits):
        out["category_0"][0, i, j, cls] = logit
        if variant == "solov2":
            out["kernel_0"][0, i, j] = (10.0, 0.0)
        elif variant == "solo":
            out["mask_0"][0, :, :, i * s + j] = 10.0 * inside
        else:
            rows = np.full(H // 4, NEG, np.float32)
            cols = np.full(W // 4, NEG, np.float32)
            rows[R0:R1], cols[C0:C1] = 12.0, 12.0
            out["mask_y_0"][0, :, :, i] = rows[:, None]
            out["mask_x_0"][0, :, :, j] = cols[None, :]
    if variant == "solov2":
        out["mask_feature"][0, :, :, 0] = inside
    return cfg, out


@pytest.mark.parametrize("variant", ["solov2", "solo", "decoupled_solo"])
def test_empty_predictions(variant):
    cfg = tiny_model_config(variant, image_size=(H, W))
    d = _np(decode(_empty_outputs(cfg), cfg, PostprocessConfig(max_per_img=7)))
    assert d["num_detections"].tolist() == [0]
    assert d["detection_masks"].shape == (1, 7, H, W)
    assert d["detection_scores"].shape == (1, 7) and d["detection_classes"].shape == (1, 7)
    assert d["detection_boxes"].shape == (1, 7, 4)
    assert d["detection_classes"].dtype == np.int32 and d["num_detections"].dtype == np.int32
    np.testing.assert_array_equal(d["detection_classes"], -1)
    np.testing.assert_array_equal(d["detection_scores"], 0)
    assert np.all(np.isfinite(d["detection_masks"])) and d["detection_masks"].max() == 0


@pytest.mark.parametrize("variant", ["solov2", "solo", "decoupled_solo"])
def test_adjacent_cells_keep_one_instance(variant):
    # (5, 5) is the stronger cell; (5, 6) to its right is removed by the 2x2 local max.
    cfg, out = _object_outputs(variant, [(5, 5), (5, 6)], [3.0, 2.0])
    d = _np(decode(out, cfg, PostprocessConfig()))
    assert d["num_detections"].tolist() == [1]
    assert d["detection_classes"][0, 0] == 1
    binary = d["detection_masks"][0, 0] > 0.5
    expected = np.zeros((H, W), bool)
    expected[R0 * 4 : R1 * 4, C0 * 4 : C1 * 4] = True
    # Bilinear upsampling rounds the 4 corner pixels off (0.625^2 of the inside < 0.5).
    assert not (binary & ~expected).any()
    assert (expected & ~binary).sum() == 4
    np.testing.assert_allclose(d["detection_boxes"][0, 0], [C0 * 4, R0 * 4, C1 * 4, R1 * 4])
    # score = sigmoid(3) * maskness, maskness ~1 for a saturated mask.
    assert 0.9 * (1 / (1 + np.exp(-3.0))) < d["detection_scores"][0, 0] <= 1 / (1 + np.exp(-3.0)) + 1e-6


def test_duplicates_at_distant_cells_are_decayed():
    # Not neighbours: both survive the local max; Matrix NMS decays the weaker one (IoU 1).
    cfg, out = _object_outputs("solov2", [(5, 5), (5, 8)], [3.0, 2.0])
    gauss = _np(decode(out, cfg, PostprocessConfig(kernel="gaussian")))
    assert gauss["num_detections"].tolist() == [2]
    s0, s1 = gauss["detection_scores"][0, :2]
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(s1 / s0, sig(2.0) / sig(3.0) * np.exp(-2.0), rtol=1e-4)
    linear = _np(decode(out, cfg, PostprocessConfig(kernel="linear")))
    assert linear["num_detections"].tolist() == [1]  # 1 - IoU = 0: removed


def test_small_masks_are_dropped():
    # A mask of area 4 at stride 4 is not larger than the level's stride (8).
    cfg, out = _object_outputs("solov2", [(5, 5)], [3.0])
    out["mask_feature"][0, :, :, 0] = -1.0
    out["mask_feature"][0, R0 : R0 + 2, C0 : C0 + 2, 0] = 1.0
    assert _np(decode(out, cfg, PostprocessConfig()))["num_detections"].tolist() == [0]
    out["mask_feature"][0, R0 : R0 + 3, C0 : C0 + 3, 0] = 1.0  # area 9 > 8
    assert _np(decode(out, cfg, PostprocessConfig()))["num_detections"].tolist() == [1]


def test_points_nms_matches_reference_maxpool():
    rng = np.random.RandomState(0)
    heat = rng.rand(2, 7, 7, 3).astype(np.float32)
    heat[0, 2, 2, 0] = heat[0, 2, 3, 0]  # a tie keeps both
    got = ops.convert_to_numpy(points_nms(heat))
    padded = np.pad(heat, [(0, 0), (1, 0), (1, 0), (0, 0)], constant_values=-np.inf)
    hmax = np.maximum.reduce([padded[:, a : a + 7, b : b + 7] for a in (0, 1) for b in (0, 1)])
    np.testing.assert_array_equal(got, heat * (hmax == heat))


def test_masks_to_boxes():
    m = np.zeros((2, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    boxes = ops.convert_to_numpy(masks_to_boxes(m))
    np.testing.assert_array_equal(boxes, [[3, 2, 9, 5], [0, 0, 0, 0]])


# --- a numpy reference of the published pipeline (boolean filtering, per image) -------------
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _ref_matrix_nms(masks, labels, scores, sigma, filter_thr, max_num):
    order = np.argsort(-scores, kind="stable")
    masks, labels, scores = masks[order].reshape(len(order), -1).astype(np.float64), labels[order], scores[order]
    n = len(order)
    area = masks.sum(1)
    inter = masks @ masks.T
    iou = np.triu(inter / (area[:, None] + area[None, :] - inter), 1)
    iou = iou * np.triu(labels[:, None] == labels[None, :], 1)
    comp = iou.max(0)
    decay = (np.exp(-sigma * iou**2) / np.exp(-sigma * comp[:, None] ** 2)).min(0) if n else comp
    scores = scores * decay
    keep = scores >= filter_thr
    order, scores, labels = order[keep], scores[keep], labels[keep]
    s = np.argsort(-scores, kind="stable")[:max_num]
    return scores[s], labels[s], order[s]


def _reference_solov2(out, cfg, pc):
    cates, kernels, strides = [], [], []
    for l, (s, st) in enumerate(zip(cfg.num_grids, cfg.strides)):
        heat = _sigmoid(out[f"category_{l}"][0])
        padded = np.pad(heat, [(1, 0), (1, 0), (0, 0)], constant_values=-np.inf)
        hmax = np.maximum.reduce([padded[a : a + s, b : b + s] for a in (0, 1) for b in (0, 1)])
        cates.append((heat * (hmax == heat)).reshape(s * s, -1))
        kernels.append(out[f"kernel_{l}"][0].reshape(s * s, -1))
        strides += [st] * (s * s)
    cates, kernels, strides = np.concatenate(cates), np.concatenate(kernels), np.array(strides)
    cell, cls = np.nonzero(cates > pc.score_thr)
    score = cates[cell, cls]
    feat = out["mask_feature"][0]
    soft = _sigmoid(np.einsum("hwe,ne->nhw", feat, kernels[cell]))
    binary = soft > pc.mask_thr
    area = binary.sum((1, 2))
    keep = area > strides[cell]
    soft, binary, area, score, cls = soft[keep], binary[keep], area[keep], score[keep], cls[keep]
    score = score * (soft * binary).sum((1, 2)) / area
    f = pc.nms_stride // 4  # overlaps of f x f cell averages
    n, h, w = binary.shape
    nms_masks = binary.reshape(n, h // f, f, w // f, f).mean((2, 4))
    scores, labels, idx = _ref_matrix_nms(nms_masks, cls, score, pc.sigma, pc.update_thr, pc.max_per_img)
    masks = resize_bilinear(soft[idx], (cfg.image_size[0], cfg.image_size[1]))
    return scores, labels, masks


def _random_solov2(seed, cfg, batch=2):
    rng = np.random.RandomState(seed)
    out = {}
    for l, s in enumerate(cfg.num_grids):
        out[f"category_{l}"] = rng.normal(-3.0, 1.5, (batch, s, s, cfg.num_classes)).astype(np.float32)
        out[f"kernel_{l}"] = rng.normal(0, 1, (batch, s, s, 4)).astype(np.float32)
    h, w = cfg.image_size[0] // 4, cfg.image_size[1] // 4
    out["mask_feature"] = rng.normal(0, 1.5, (batch, h, w, 4)).astype(np.float32)
    return out


@pytest.mark.parametrize("nms_stride", [4, 8, 16])
def test_solov2_matches_numpy_reference(nms_stride):
    cfg = tiny_model_config("solov2", image_size=(64, 96))
    pc = PostprocessConfig(max_per_img=20, nms_stride=nms_stride)
    out = _random_solov2(1, cfg)
    d = _np(decode(out, cfg, pc))
    for b in range(2):
        one = {k: v[b : b + 1] for k, v in out.items()}
        scores, labels, masks = _reference_solov2({k: v for k, v in one.items()}, cfg, pc)
        m = len(scores)
        assert m > 3, "the random case should leave several detections"
        assert d["num_detections"][b] == m
        np.testing.assert_allclose(d["detection_scores"][b, :m], scores, atol=1e-5)
        np.testing.assert_array_equal(d["detection_classes"][b, :m], labels)
        np.testing.assert_allclose(d["detection_masks"][b, :m], masks, atol=1e-4)


def _random_outputs(variant, cfg, seed):
    if variant == "solov2":
        return _random_solov2(seed, cfg, batch=1)
    rng = np.random.RandomState(seed)
    out = {}
    for l, (s, st) in enumerate(zip(cfg.num_grids, cfg.strides)):
        out[f"category_{l}"] = rng.normal(-3, 1.5, (1, s, s, cfg.num_classes)).astype(np.float32)
        m = cfg.image_size[0] // (st // 2)
        if variant == "solo":
            out[f"mask_{l}"] = rng.normal(0, 2, (1, m, m, s * s)).astype(np.float32)
        else:
            out[f"mask_x_{l}"] = rng.normal(0, 2, (1, m, m, s)).astype(np.float32)
            out[f"mask_y_{l}"] = rng.normal(0, 2, (1, m, m, s)).astype(np.float32)
    return out


def test_coarse_nms_overlaps_are_exact_for_masks_made_of_whole_coarse_cells():
    """With every mask constant on 2x2 blocks of stride-4 pixels, 2x2 averages lose nothing:
    nms_stride 8 gives exactly what 4 gives; on random masks it decays differently."""
    cfg = tiny_model_config("solov2", image_size=(64, 96))
    out = _random_solov2(3, cfg, batch=1)
    blocky = dict(out, mask_feature=np.repeat(np.repeat(out["mask_feature"][:, ::2, ::2], 2, 1), 2, 2))
    fine, coarse = (_np(decode(blocky, cfg, PostprocessConfig(max_per_img=20, nms_stride=s))) for s in (4, 8))
    assert fine["num_detections"][0] > 3
    for key in fine:
        np.testing.assert_allclose(coarse[key], fine[key], atol=1e-6, err_msg=key)
    fine, coarse = (_np(decode(out, cfg, PostprocessConfig(max_per_img=20, nms_stride=s))) for s in (4, 8))
    assert not np.allclose(coarse["detection_scores"], fine["detection_scores"])


def test_nms_stride_must_be_4_8_or_16():
    from solo_tf.config import ConfigError

    with pytest.raises(ConfigError, match="postprocess.nms_stride"):
        PostprocessConfig(nms_stride=6).validate()


def test_jax_backend_agrees_with_tensorflow(tmp_path):
    variants = ("solov2", "solo", "decoupled_solo")
    tf_res = {}
    for variant in variants:
        cfg = tiny_model_config(variant, image_size=(64, 64))
        out = _random_outputs(variant, cfg, 2)
        np.savez(tmp_path / f"{variant}_in.npz", **out)
        tf_res[variant] = _np(decode(out, cfg, PostprocessConfig()))
    code = (  # one JAX process for all variants: its start-up is most of the cost
        "import sys, numpy as np\n"
        "sys.path.insert(0, 'tests')\n"
        "from conftest import tiny_model_config\n"
        "from keras import ops\n"
        "from solo_tf.config import PostprocessConfig\n"
        "from solo_tf.decoder import decode\n"
        "for variant in sys.argv[2:]:\n"
        "    cfg = tiny_model_config(variant, image_size=(64, 64))\n"
        "    out = dict(np.load(f'{sys.argv[1]}/{variant}_in.npz'))\n"
        "    d = decode(out, cfg, PostprocessConfig())\n"
        "    np.savez(f'{sys.argv[1]}/{variant}_jax.npz', **{k: ops.convert_to_numpy(v) for k, v in d.items()})\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), *variants],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for variant in variants:
        jax_res = dict(np.load(tmp_path / f"{variant}_jax.npz"))
        assert tf_res[variant]["num_detections"][0] > 0, f"{variant}: the case should have detections"
        for k in tf_res[variant]:
            np.testing.assert_allclose(jax_res[k], tf_res[variant][k], atol=1e-5, err_msg=f"{variant}: {k}")


def test_postprocess_image_to_original_size():
    # Original 50 x 67 letterboxed into 64 x 64 at scale 64/67: valid region 48 x 64.
    k = 5
    masks = np.zeros((k, 64, 64), np.float32)
    masks[0, 8:24, 16:48] = 1.0
    masks[1, 30:40, 0:10] = 0.9
    masks[2, 50:60, :] = 1.0  # junk in an empty slot: dropped
    dets = {
        "detection_masks": masks,
        "detection_scores": np.array([0.9, 0.6, 0.0, 0, 0], np.float32),
        "detection_classes": np.array([2, 0, -1, -1, -1], np.int32),
        "detection_boxes": np.zeros((k, 4), np.float32),
        "num_detections": np.int32(2),
    }
    inst = postprocess_image(dets, (48, 64), (50, 67))
    assert inst["masks"].shape == (2, 50, 67) and inst["masks"].dtype == bool
    np.testing.assert_array_equal(inst["classes"], [2, 0])
    np.testing.assert_allclose(inst["scores"], [0.9, 0.6])
    s = 50 / 48
    x1, y1, x2, y2 = inst["boxes"][0]
    assert abs(x1 - 16 * 67 / 64) <= 1 and abs(x2 - 48 * 67 / 64) <= 1
    assert abs(y1 - 8 * s) <= 1 and abs(y2 - 24 * s) <= 1
    assert inst["masks"][1].sum() > 0


def test_postprocess_image_rejects_bad_valid_size():
    dets = {"detection_masks": np.zeros((2, 32, 32)), "detection_scores": np.zeros(2),
            "detection_classes": np.zeros(2, np.int32), "num_detections": np.int32(0)}
    with pytest.raises(ValueError, match="valid_size"):
        postprocess_image(dets, (40, 10), (40, 10))


def test_resize_bilinear_matches_keras_resize():
    x = np.random.RandomState(0).rand(3, 5, 7).astype(np.float32)
    got = resize_bilinear(x, (13, 9))
    ref = ops.convert_to_numpy(
        ops.image.resize(np.transpose(x, (1, 2, 0)), (13, 9), interpolation="bilinear", antialias=False)
    )
    np.testing.assert_allclose(got, np.transpose(ref, (2, 0, 1)), atol=1e-5)


def test_binarize_equals_the_comparison_at_the_threshold_and_around_it():
    for thr in (0.5, 0.3, 0.45):
        t = np.float32(thr)
        soft = np.array([0.0, np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1)), 0.7, 1.0,
                         np.float32(1e-30), np.float32(1) - np.float32(2 ** -24)], np.float32)
        binary, excess = (np.asarray(v) for v in binarize(soft, thr))
        np.testing.assert_array_equal(binary, (soft > t).astype(np.float32))
        np.testing.assert_allclose(excess, np.maximum(soft - t, 0), rtol=0, atol=0)
