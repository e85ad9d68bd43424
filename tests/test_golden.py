"""Golden parity: every case in $SOLO_GOLDEN_DIR (default ../shared/golden), one test per file.

targets_NNN.npz: category and owner grids must be equal; mask targets >= 99% pixels equal
per level (a different bilinear kernel may move a few edge pixels).
matrix_nms_NNN.npz: decayed scores to 1e-5, same labels, same order, same kept indices.
"""

import json

import numpy as np
import pytest

from conftest import golden_dir

GOLDEN = golden_dir()
TARGET_CASES = sorted(GOLDEN.glob("targets_*.npz"))
NMS_CASES = sorted(GOLDEN.glob("matrix_nms_*.npz"))


def test_golden_dir_has_cases():
    assert GOLDEN.is_dir(), f"golden directory not found: {GOLDEN} (set SOLO_GOLDEN_DIR)"
    assert TARGET_CASES or NMS_CASES, f"no golden cases in {GOLDEN}"


def _center_of_mass(mask):
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0.0, 0.0
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("path", TARGET_CASES, ids=[p.stem for p in TARGET_CASES])
def test_targets_golden(path):
    from keras import ops

    from solo_tf.config import ModelConfig
    from solo_tf.targets import assign_grids, gather_mask_targets, positive_slots, resize_masks
    from solo_tf.variants import get_variant

    d = np.load(path)
    variant = str(d["variant"])
    h, w = (int(v) for v in d["image_size"])
    masks = d["masks"]
    n = masks.shape[0]
    slots = max(n, 1)  # padded batch of one image; an empty image still has one padding slot
    classes = np.full((1, slots), -1, np.int32)
    boxes = np.zeros((1, slots, 4), np.float32)
    centers = np.zeros((1, slots, 2), np.float32)
    full = np.zeros((1, slots, h, w), np.uint8)
    classes[0, :n] = d["classes"]
    boxes[0, :n] = d["boxes"]
    full[0, :n] = masks
    for i in range(n):
        centers[0, i] = _center_of_mass(masks[i])
    valid = full.reshape(1, slots, -1).max(-1) > 0

    num_grids = [int(s) for s in d["num_grids"]]
    strides = [int(s) for s in d["strides"]]
    # the reference's mask-target sizes check the variant's mask strides
    mask_strides = get_variant(ModelConfig(variant=variant, num_grids=tuple(num_grids), strides=tuple(strides),
                                           image_size=(h, w))).mask_strides
    grids = assign_grids(
        classes, boxes, centers, valid, (h, w), num_grids, d["scale_ranges"].tolist(), float(d["pos_scale"])
    )
    for lvl, ((cate, owner), s, mask_stride) in enumerate(zip(grids, num_grids, mask_strides)):
        np.testing.assert_array_equal(ops.convert_to_numpy(cate)[0], d[f"cate_{lvl}"], err_msg=f"cate_{lvl}")
        np.testing.assert_array_equal(ops.convert_to_numpy(owner)[0], d[f"owner_{lvl}"], err_msg=f"owner_{lvl}")

        expected = d[f"mask_targets_{lvl}"]
        size = (h // mask_stride, w // mask_stride)
        assert expected.shape[1:] == size
        level_masks = resize_masks(full, size)
        cells, owners, is_pos, _ = positive_slots(owner, s * s)
        got = ops.convert_to_numpy(gather_mask_targets(level_masks, owners))[0]
        num_pos = int(ops.convert_to_numpy(is_pos).sum())
        assert num_pos == expected.shape[0] == int((d[f"owner_{lvl}"] >= 0).sum())
        k = ops.convert_to_numpy(cells)[0, :num_pos]
        np.testing.assert_array_equal(k, np.flatnonzero(d[f"owner_{lvl}"].reshape(-1) >= 0))
        if num_pos:
            agree = (got[:num_pos] == expected).mean()
            assert agree >= 0.99, f"level {lvl}: only {agree:.4f} of mask-target pixels equal"


@pytest.mark.parametrize("path", NMS_CASES, ids=[p.stem for p in NMS_CASES])
def test_matrix_nms_golden(path):
    from matrix_nms_reference import matrix_nms_numpy_case

    d = np.load(path)
    params = json.loads(str(d["params"]))
    scores, labels, keep = matrix_nms_numpy_case(d["masks"], d["labels"], d["scores"], **params)
    np.testing.assert_allclose(scores, d["out_scores"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(labels, d["out_labels"])
    np.testing.assert_array_equal(keep, d["out_keep_inds"])
