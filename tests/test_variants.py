"""Variant objects: the registry, mask strides, and masks_for_cells - the one mask builder the
Dice loss and the decoder share - against a numpy reference of each paper's mask formula."""

import numpy as np
import pytest
from conftest import tiny_model_config
from keras import ops

from solo_tf.config import ConfigError, ModelConfig
from solo_tf.decoder import resize_bilinear
from solo_tf.variants import (
    VARIANTS,
    DecoupledSOLOVariant,
    SOLOv2Variant,
    SOLOVariant,
    Variant,
    check_model_config,
    get_variant,
    multi_level_flatten,
)

H = W = 64
E = 3


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_registry_maps_each_config_name_to_its_class():
    assert VARIANTS == {"solo": SOLOVariant, "decoupled_solo": DecoupledSOLOVariant, "solov2": SOLOv2Variant}
    for name, cls in VARIANTS.items():
        cfg = tiny_model_config(name)
        variant = get_variant(cfg)
        assert type(variant) is cls and variant.name == name
        assert get_variant(variant) is variant
        assert type(get_variant({"variant": name})) is cls  # the dict form of a ModelConfig


def test_unknown_variant_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="unknown model variant 'solov3'.*solo, decoupled_solo, solov2"):
        get_variant(ModelConfig(variant="solov3"))
    with pytest.raises(ConfigError, match="model.variant"):
        check_model_config(ModelConfig(variant="solov3"))


def test_solov2_checks_its_own_widths():
    with pytest.raises(ConfigError, match="mask_channels"):
        tiny_model_config("solov2", mask_channels=30)  # not divisible by norm_groups 8
    tiny_model_config("solo", mask_channels=30)  # SOLO has no mask-feature branch: not checked


def test_mask_strides_and_sizes():
    for name in ("solo", "decoupled_solo"):
        v = get_variant(tiny_model_config(name, image_size=(64, 96)))
        assert v.mask_strides == (4, 8, 16)  # strides (8, 16, 32) / 2
        assert [v.mask_size(l) for l in range(3)] == [(16, 24), (8, 12), (4, 6)]
    v2 = get_variant(tiny_model_config("solov2", image_size=(64, 96)))
    assert v2.mask_strides == (4, 4, 4)
    assert v2.output_names()[-1] == "mask_feature"


def test_multi_level_flatten_numbers_cells_level_by_level():
    a = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    b = 100 + np.arange(2 * 2 * 2).reshape(2, 2, 2)
    flat = ops.convert_to_numpy(multi_level_flatten([a, b]))
    np.testing.assert_array_equal(flat, np.concatenate([a.reshape(2, 9), b.reshape(2, 4)], axis=1))
    assert flat[1, 9 + 1 * 2 + 0] == b[1, 1, 0]  # k = offset + i * S + j


# --- masks_for_cells against the papers' formulas -------------------------------------------------
def _random_outputs(cfg, seed=0, batch=2):
    rng = np.random.RandomState(seed)
    v = get_variant(cfg)
    out = {}
    for l, s in enumerate(cfg.num_grids):
        out[f"category_{l}"] = rng.normal(0, 1, (batch, s, s, cfg.num_classes)).astype(np.float32)
        hm, wm = v.mask_size(l)
        if cfg.variant == "solov2":
            out[f"kernel_{l}"] = rng.normal(0, 1, (batch, s, s, E)).astype(np.float32)
        elif cfg.variant == "solo":
            out[f"mask_{l}"] = rng.normal(0, 2, (batch, hm, wm, s * s)).astype(np.float32)
        else:
            out[f"mask_x_{l}"] = rng.normal(0, 2, (batch, hm, wm, s)).astype(np.float32)
            out[f"mask_y_{l}"] = rng.normal(0, 2, (batch, hm, wm, s)).astype(np.float32)
    if cfg.variant == "solov2":
        out["mask_feature"] = rng.normal(0, 1, (batch, H // 4, W // 4, E)).astype(np.float32)
    return out


def _reference_mask(out, variant, b, level, k, size=None):
    """Mask of cell k = i*S + j of ``level`` in image b, as each paper writes it; resized
    (after the sigmoid, each factor on its own for Decoupled SOLO, as the reference decoder)."""
    s = variant.num_grids[level]
    i, j = divmod(int(k), s)

    def fit(m):
        return m if size is None or m.shape == tuple(size) else resize_bilinear(m[None], size)[0]

    if variant.name == "solo":
        return fit(_sigmoid(out[f"mask_{level}"][b, :, :, k]))
    if variant.name == "decoupled_solo":
        return fit(_sigmoid(out[f"mask_x_{level}"][b, :, :, j])) * fit(_sigmoid(out[f"mask_y_{level}"][b, :, :, i]))
    return fit(_sigmoid(out["mask_feature"][b] @ out[f"kernel_{level}"][b, i, j]))


@pytest.mark.parametrize("name", ["solo", "decoupled_solo", "solov2"])
def test_loss_and_decoder_masks_follow_the_papers_formula(name):
    cfg = tiny_model_config(name, image_size=(H, W))
    variant = get_variant(cfg)
    out = _random_outputs(cfg)
    rng = np.random.RandomState(1)
    grids = variant.num_grids
    offsets = np.cumsum([0] + [s * s for s in grids])

    # The Dice loss: cells numbered within a level, masks at that level's own resolution.
    per_level = {}
    for level, s in enumerate(grids):
        cells = rng.randint(0, s * s, (2, 7))
        got = ops.convert_to_numpy(variant.masks_for_cells(out, cells, levels=(level,)))
        assert got.shape == (2, 7) + variant.mask_size(level)
        for b in range(2):
            for m, k in enumerate(cells[b]):
                np.testing.assert_allclose(got[b, m], _reference_mask(out, variant, b, level, k), atol=1e-6)
        per_level[level] = (cells, got)

    # The decoder: cells numbered over all levels, every mask at stride 4 (H/4, W/4).
    cells = rng.randint(0, offsets[-1], (2, 11))
    cells[0, :3] = [0, offsets[1], offsets[-1] - 1]  # first cell of levels 0 and 1, last of all
    got = ops.convert_to_numpy(variant.masks_for_cells(out, cells, size=(H // 4, W // 4)))
    assert got.shape == (2, 11, H // 4, W // 4)
    for b in range(2):
        for m, g in enumerate(cells[b]):
            level = int(np.searchsorted(offsets, g, side="right") - 1)
            ref = _reference_mask(out, variant, b, level, g - offsets[level], size=(H // 4, W // 4))
            np.testing.assert_allclose(got[b, m], ref, atol=1e-5)

    # Same cells through both: where a level's own resolution is stride 4 they agree exactly.
    level = 0
    assert variant.mask_size(level) == (H // 4, W // 4)
    local, loss_masks = per_level[level]
    decoder_masks = variant.masks_for_cells(out, local + offsets[level], size=(H // 4, W // 4))
    np.testing.assert_array_equal(ops.convert_to_numpy(decoder_masks), loss_masks)


def test_levels_of_different_mask_sizes_need_a_size():
    cfg = tiny_model_config("solo", image_size=(H, W))
    variant = get_variant(cfg)
    with pytest.raises(ValueError, match="pass size"):
        variant.masks_for_cells(_random_outputs(cfg), np.zeros((2, 3), np.int32), levels=(0, 1))


def test_missing_outputs_are_named():
    variant = get_variant(tiny_model_config("decoupled_solo"))
    out = _random_outputs(variant.model_config)
    del out["mask_y_1"]
    with pytest.raises(ValueError, match=r"decoupled_solo.*\['mask_y_1'\]"):
        variant.check_outputs(out, "decode")


def test_a_new_variant_is_one_class(monkeypatch):
    """Registering one subclass is all it takes: config validation, model, loss and decoder."""
    from solo_tf.config import PostprocessConfig
    from solo_tf.decoder import decode
    from solo_tf.model import SOLO

    class CoarseSOLOv2Variant(SOLOv2Variant):
        """SOLOv2 whose Dice loss gathers positives level by level (one matmul per level)."""

        name = "solov2_per_level_loss"

        def loss_level_groups(self):
            return Variant.loss_level_groups(self)

    monkeypatch.setitem(VARIANTS, CoarseSOLOv2Variant.name, CoarseSOLOv2Variant)
    cfg = tiny_model_config("solov2_per_level_loss", image_size=(H, W))
    model = SOLO(cfg)
    assert isinstance(model.variant, CoarseSOLOv2Variant)
    reference = SOLO(tiny_model_config("solov2", image_size=(H, W)))
    reference.set_weights(model.get_weights())

    from batches import images, one_object_batch

    x, y = images(2), one_object_batch()
    out = model(x)
    a = [float(v) for v in model.solo_loss(y, out)]
    b = [float(v) for v in reference.solo_loss(y, reference(x))]
    np.testing.assert_allclose(a, b, rtol=1e-5)  # same positives, grouped differently
    dets = decode(out, cfg, PostprocessConfig(score_thr=0.0, max_per_img=4))
    assert tuple(dets["detection_masks"].shape) == (2, 4, H, W)
