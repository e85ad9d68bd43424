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
    grids = grid_targets(y, model.model_config)
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
    _, count, overflow = loss.dice_terms(y, models[variant](images(1)), grids)
    assert float(overflow) == 0
    assert float(count) == 36


# --- the cap on the Dice loss's positive slots (loss.max_positives) ------------------------------
def _crowded_batch():
    """Two images: one with 5 objects of mixed sizes (many positives), one with 1."""
    return rectangles_batch([
        [(0, 0, 0, 28, 28), (1, 36, 36, 64, 64), (2, 4, 40, 14, 50), (0, 40, 4, 50, 14), (1, 20, 20, 44, 44)],
        [(2, 10, 10, 40, 40)],
    ], slots=6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_capped_dice_equals_the_uncapped_loss_while_positives_fit(variant, models):
    cfg = tiny_model_config(variant, pos_scale=1.0)
    y = _crowded_batch()
    out = models[variant](images(2))
    full = SOLOLoss(cfg, LossConfig(max_positives=None))
    grids = full.grid_targets(y)
    per_group = [sum(int((ops.convert_to_numpy(grids[l][1])[b] >= 0).sum()) for l in levels)
                 for b in range(2) for levels in full.variant.loss_level_groups()]
    most = max(per_group)
    assert most < full.dice_slots(6, full.variant.loss_level_groups()[0]), "the batch must be below the bound"
    capped = SOLOLoss(cfg, LossConfig(max_positives=most))
    a, b = full.terms(y, out), capped.terms(y, out)
    np.testing.assert_allclose([float(a["focal"]), float(a["dice"])], [float(b["focal"]), float(b["dice"])],
                               rtol=1e-5)
    assert float(a["overflow"]) == 0 and float(b["overflow"]) == 0
    # one slot fewer than the busiest image needs: exactly one positive overflows there
    tight = SOLOLoss(cfg, LossConfig(max_positives=most - 1)).terms(y, out)
    assert float(tight["overflow"]) == sum(max(n - (most - 1), 0) for n in per_group) >= 1
    assert np.isfinite(float(tight["dice"]))


def test_an_overflowing_image_keeps_a_fair_subset_and_counts_the_rest():
    """Slots go round robin over the objects: a one-cell object keeps its cell while a
    nine-cell one gives up cells; the dropped ones are counted."""
    from solo_tf.targets import positive_slots

    owner = np.full((2, 40), -1, np.int32)
    owner[0, 1:10] = 0  # object 0: 9 cells
    owner[0, [20, 30]] = 1  # object 1: 2 cells
    owner[0, 39] = 2  # object 2: 1 cell
    owner[1, [0, 5]] = 3  # the second image fits
    cells, owners, pos, overflow = (ops.convert_to_numpy(t) for t in positive_slots(owner, 6, 4))
    kept = owners[0][pos[0] > 0]
    assert sorted(np.bincount(kept, minlength=3).tolist()) == [1, 2, 3]
    assert set(cells[0][owners[0] == 2]) == {39} and set(cells[0][owners[0] == 1]) == {20, 30}
    assert (owner[0][cells[0]] == owners[0]).all(), "each kept cell is owned by the slot it reports"
    assert overflow.tolist() == [6.0, 0.0]
    assert sorted(cells[1][pos[1] > 0].tolist()) == [0, 5]


def test_fit_logs_the_dice_overflow():
    import keras

    cfg = tiny_model_config("solov2", pos_scale=1.0)
    y = {k: ops.convert_to_numpy(v) for k, v in _crowded_batch().items()}
    model = SOLO(cfg, loss_config=LossConfig(max_positives=4))
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    history = model.fit(ops.convert_to_numpy(images(2)), y, batch_size=2, epochs=1, verbose=0)
    assert history.history["dice_overflow"][0] > 0
    roomy = SOLO(cfg)  # the default cap is above this batch's positives
    roomy.compile(optimizer=keras.optimizers.SGD(1e-3))
    assert roomy.fit(ops.convert_to_numpy(images(2)), y, batch_size=2, epochs=1, verbose=0).history["dice_overflow"] == [0.0]


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


def test_capped_slots_are_the_same_on_jax(tmp_path):
    """The fair selection (argsort, cumsum, top_k) picks the same cells on JAX."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from solo_tf.targets import positive_slots

    rng = np.random.RandomState(3)
    owner = np.where(rng.rand(3, 97) < 0.4, rng.randint(0, 7, (3, 97)), -1).astype(np.int32)
    np.save(tmp_path / "owner.npy", owner)
    tf_res = [ops.convert_to_numpy(t) for t in positive_slots(owner, 20, 7)]
    code = (
        "import sys, numpy as np\n"
        "from keras import ops\n"
        "from solo_tf.targets import positive_slots\n"
        "owner = np.load(sys.argv[1] + '/owner.npy')\n"
        "np.savez(sys.argv[1] + '/jax.npz', *[ops.convert_to_numpy(t) for t in positive_slots(owner, 20, 7)])\n"
    )
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=repo, capture_output=True, text=True,
                         env=dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    jax_res = np.load(tmp_path / "jax.npz")
    assert float(tf_res[3].sum()) > 0, "the case should overflow"
    for i, name in enumerate(["cells", "owners", "is_pos", "overflow"]):
        np.testing.assert_array_equal(jax_res[f"arr_{i}"], tf_res[i], err_msg=name)
