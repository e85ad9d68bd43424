"""SOLOLoss: the reference's loss behaviour (empty ground truth, positives, pipeline grids),
a prediction the loss calls perfect is what the decoder returns, serialization."""

import numpy as np
import pytest
from keras import ops

from batches import empty_batch, images, one_object_batch, rectangles_batch
from conftest import tiny_model_config
from solo_tf.config import LossConfig, PostprocessConfig
from solo_tf.decoder import decode
from solo_tf.losses import SOLOLoss
from solo_tf.model import SOLO
from solo_tf.targets import grid_targets, resize_masks
from solo_tf.variants import get_variant

VARIANTS = ["solov2", "solo", "decoupled_solo"]


@pytest.fixture(scope="module")
def models():
    return {v: SOLO(tiny_model_config(v)) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_ground_truth_gives_focal_only(variant, models):
    model = models[variant]
    focal, dice = model.solo_loss(empty_batch(), model(images()))
    focal, dice = float(focal), float(dice)
    assert np.isfinite(focal) and focal > 0
    assert dice == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_object_gives_both_losses(variant, models):
    model = models[variant]
    focal, dice = model.solo_loss(one_object_batch(), model(images()))
    assert float(focal) > 0 and np.isfinite(float(focal))
    assert 0 < float(dice) <= 3.0 + 1e-6  # weight 3 x mean Dice in [0, 1]


def test_pipeline_grids_give_the_same_loss_as_in_model_assignment(models):
    model = models["solov2"]
    y = one_object_batch()
    out = model(images())
    grids = model.grid_targets(y)
    y_with = dict(y)
    for lvl, (c, o) in enumerate(grids):
        y_with[f"grid_category_{lvl}"] = ops.convert_to_numpy(c)
        y_with[f"grid_owner_{lvl}"] = ops.convert_to_numpy(o)
        # the one object is positive somewhere, and only where its class is
        assert set(np.unique(ops.convert_to_numpy(c))) <= {-1, 1}
    a = [float(v) for v in model.solo_loss(y, out)]
    b = [float(v) for v in model.solo_loss(y_with, out)]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_focal_loss_counts_positives():
    """Positives fall where the object's centre is; a background cell gets no class."""
    grids = grid_targets(one_object_batch(), tiny_model_config("solov2"))
    # object: sqrt(32*24) = 27.7 -> levels 0 (1..32) and 1 (16..64); not level 2 (32..256)
    pos = [int((ops.convert_to_numpy(o) >= 0).sum()) for _, o in grids]
    assert pos[0] > 0 and pos[1] > 0 and pos[2] == 0
    cate0 = ops.convert_to_numpy(grids[0][0])[0]
    s = 12
    i, j = int(27.5 / 64 * s), int(31.5 / 64 * s)
    assert cate0[i, j] == 1
    assert cate0[0, 0] == -1


# --- a perfect prediction, built by hand from the targets ------------------------------------------
BIG = 12.0


def _perfect_outputs(variant, y):
    """Raw outputs that predict ``y`` exactly (up to sigmoid(12)): category logits +BIG for the
    owner's class at positive cells, -BIG elsewhere; each positive cell's mask the target at
    its level's mask size, written the way the variant reads it."""
    cfg = variant.model_config
    grids = [(ops.convert_to_numpy(c), ops.convert_to_numpy(o)) for c, o in grid_targets(y, cfg)]
    batch = y["masks"].shape[0]
    out = {}
    if variant.name == "solov2":
        out["mask_feature"] = np.zeros((batch, cfg.image_size[0] // 4, cfg.image_size[1] // 4, 2), np.float32)
        gt = ops.convert_to_numpy(resize_masks(y["masks"], out["mask_feature"].shape[1:3]))
    for l, ((category, owner), s) in enumerate(zip(grids, cfg.num_grids)):
        out[f"category_{l}"] = np.full((batch, s, s, cfg.num_classes), -BIG, np.float32)
        size = variant.mask_size(l)
        targets = ops.convert_to_numpy(resize_masks(y["masks"], size))  # (B, N, h, w)
        sign = lambda t: np.where(t > 0, BIG, -BIG).astype(np.float32)  # noqa: E731
        if variant.name == "solo":
            out[f"mask_{l}"] = np.full((batch,) + size + (s * s,), -BIG, np.float32)
        elif variant.name == "decoupled_solo":
            out[f"mask_x_{l}"] = np.full((batch,) + size + (s,), -BIG, np.float32)
            out[f"mask_y_{l}"] = np.full((batch,) + size + (s,), -BIG, np.float32)
        else:
            out[f"kernel_{l}"] = np.zeros((batch, s, s, 2), np.float32)
        for b, i, j in zip(*np.nonzero(owner >= 0)):
            n = owner[b, i, j]
            out[f"category_{l}"][b, i, j, category[b, i, j]] = BIG
            if variant.name == "solo":
                out[f"mask_{l}"][b, :, :, i * s + j] = sign(targets[b, n])
            elif variant.name == "decoupled_solo":  # a rectangle is (rows it covers) x (columns)
                out[f"mask_x_{l}"][b, :, :, j] = sign(targets[b, n].max(0, keepdims=True) + 0 * targets[b, n])
                out[f"mask_y_{l}"][b, :, :, i] = sign(targets[b, n].max(1, keepdims=True) + 0 * targets[b, n])
            else:
                out[f"kernel_{l}"][b, i, j] = (BIG, 0.0)
                out["mask_feature"][b, ..., 0] = np.where(gt[b, n] > 0, 1.0, -1.0)  # one object per image
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_prediction_the_loss_calls_perfect_is_what_the_decoder_returns(variant):
    """Loss and decoder agree on which cell is which mask (k = i*S + j, X = columns, the level)."""
    cfg = tiny_model_config(variant)
    v = get_variant(cfg)
    # edges on multiples of each level's mask stride, so coarse masks upsample back exactly:
    # image 0 on levels 0 and 1 (mask strides 4, 8), image 1 on levels 1 and 2 (8, 16)
    y = rectangles_batch([[(1, 16, 16, 48, 40)], [(2, 0, 32, 48, 64)]])
    out = _perfect_outputs(v, y)
    focal, dice = (float(t) for t in SOLOLoss(cfg)(y, out))
    assert focal < 1e-3 and dice < 1e-3

    dets = {k: ops.convert_to_numpy(t) for k, t in
            decode(out, cfg, PostprocessConfig(kernel="linear"), full_size_masks=False).items()}
    gt = ops.convert_to_numpy(resize_masks(y["masks"], (16, 16)))[:, 0] > 0
    for b, cls in enumerate((1, 2)):
        n = dets["num_detections"][b]
        assert n >= 1
        assert (dets["detection_classes"][b, :n] == cls).all()
        for m in dets["detection_masks"][b, :n] > 0.5:
            assert (m & gt[b]).sum() / (m | gt[b]).sum() > 0.95

    # the same outputs read with X and Y swapped are far from perfect: the check has teeth
    if variant == "decoupled_solo":
        swapped = {k: t for k, t in out.items() if not k.startswith("mask_")}
        for l in range(len(cfg.num_grids)):
            swapped[f"mask_x_{l}"], swapped[f"mask_y_{l}"] = out[f"mask_y_{l}"], out[f"mask_x_{l}"]
        assert float(SOLOLoss(cfg)(y, swapped)[1]) > 1.0


@pytest.mark.parametrize("variant", ["solov2", "solo"])
def test_every_positive_gets_a_dice_term_at_the_slot_budget(variant, models):
    """Two objects, each positive on a full 3x3 region on two levels: 36 positives, exactly the
    budget of max_positive_slots for 2 ground-truth slots, and all of them get a Dice term."""
    cfg = tiny_model_config(variant, pos_scale=1.0)  # centre regions wide enough for 3x3
    y = rectangles_batch([[(0, 0, 0, 28, 28), (1, 36, 36, 64, 64)]], slots=2)  # scale 28: levels 0, 1
    loss = SOLOLoss(cfg)
    grids = loss.grid_targets(y)
    positives = [int((ops.convert_to_numpy(o) >= 0).sum()) for _, o in grids]
    assert positives == [18, 18, 0]
    _, count = loss.dice_terms(y, models[variant](images(1)), grids)
    assert float(count) == 36


def test_loss_layer_config_round_trip():
    cfg = tiny_model_config("decoupled_solo")
    loss = SOLOLoss(cfg, LossConfig(dice_weight=2.0), name="solo_loss")
    clone = SOLOLoss.from_config(loss.get_config())
    assert clone.model_config == cfg and clone.loss_config.dice_weight == 2.0
    assert type(clone.variant) is type(loss.variant)
    y, out = one_object_batch(), _perfect_outputs(loss.variant, one_object_batch())
    out["category_0"] = out["category_0"] * 0.0  # something left to learn
    np.testing.assert_allclose([float(t) for t in clone(y, out)], [float(t) for t in loss(y, out)], rtol=1e-6)


def test_loss_is_computed_in_float32_under_mixed_precision():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        loss = SOLOLoss(tiny_model_config("solo"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert loss.compute_dtype == "float32"  # float16 inputs would round the Dice sums
