"""Pictures: each function writes a PNG of the expected layout, atomically, with a title and a
legend; training curves mark the learning-rate steps."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from solo_tf.visualize import (
    CAPTION_PX,
    PANEL_GAP_PX,
    TITLE_PX,
    draw_comparison,
    draw_instances,
    draw_target_grids,
    lr_steps,
    plot_training_curves,
    zoom_for,
)


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size  # (w, h)


def _image(h=75, w=101):
    rng = np.random.RandomState(0)
    return rng.randint(0, 255, (h, w, 3)).astype(np.uint8)


def _rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _band_is_blank(px):
    """No text or patch in this band: fewer than 20 pixels away from the white background."""
    return int((px < 200).any(axis=-1).sum()) < 20


def test_draw_instances_layout_overlay_title_and_legend(tmp_path):
    image = _image()
    masks = np.zeros((2, 75, 101), bool)
    masks[0, 10:40, 5:50] = True
    masks[1, 30:70, 60:95] = True
    out = draw_instances(image, masks, [0, 1], [0.9, 0.4], ["cat", "dog"], tmp_path / "inst.png", title="two pets")
    z = zoom_for(75, 101)
    assert z == 2
    w, h = _png_size(out)
    assert w == 101 * z and h > TITLE_PX + CAPTION_PX + 75 * z  # a legend band below the image
    px = _rgb(out)
    top = TITLE_PX + CAPTION_PX
    region = px[top : top + 75 * z, :]
    shown = region[::z, ::z]  # one pixel per image pixel (nearest-neighbour zoom)
    # The overlay changes the pixels under a mask (away from outlines and labels) and leaves the rest.
    assert np.abs(shown[60:65, 75:85] - image[60:65, 75:85]).mean() > 10
    assert np.abs(shown[72:74, 0:3] - image[72:74, 0:3]).mean() < 3
    assert not _band_is_blank(px[:TITLE_PX]), "no title drawn"
    assert not _band_is_blank(px[top + 75 * z :]), "no legend drawn"
    # Both instances are of different classes: the overlays have different colours.
    assert np.abs(shown[20, 20] - shown[50, 80]).sum() > 30
    assert not list(tmp_path.glob(".*"))


def test_draw_instances_hides_low_scores(tmp_path):
    image = np.full((64, 64, 3), 128, np.uint8)
    masks = np.zeros((1, 64, 64), bool)
    masks[0, 20:40, 20:40] = True
    low = _rgb(draw_instances(image, masks, [0], [0.2], ["a"], tmp_path / "low.png", score_thr=0.3))
    high = _rgb(draw_instances(image, masks, [0], [0.5], ["a"], tmp_path / "high.png", score_thr=0.3))
    z, top = zoom_for(64, 64), TITLE_PX + CAPTION_PX
    centre = (top + 30 * z, 30 * z)
    assert np.abs(low[centre] - 128).max() <= 2  # below the threshold: not drawn
    assert np.abs(high[centre] - 128).max() > 20


def test_draw_instances_without_instances(tmp_path):
    out = draw_instances(_image(64, 64), np.zeros((0, 64, 64)), [], [], None, tmp_path / "none.png")
    assert _png_size(out)[0] == 64 * zoom_for(64, 64)


def test_draw_comparison_puts_ground_truth_beside_prediction(tmp_path):
    image = np.full((64, 64, 3), 100, np.uint8)
    gt = np.zeros((1, 64, 64), bool)
    gt[0, 5:25, 5:25] = True  # top-left object in the ground truth
    pred = np.zeros((1, 64, 64), bool)
    pred[0, 40:60, 40:60] = True  # a bottom-right prediction
    out = draw_comparison(image, {"masks": gt, "classes": [2]}, {"masks": pred, "classes": [2], "scores": [0.8]},
                          ["a", "b", "c"], tmp_path / "cmp.png", score_thr=0.3, title="image 0")
    z = zoom_for(64, 64)
    w, h = _png_size(out)
    assert w == 2 * 64 * z + PANEL_GAP_PX
    px = _rgb(out)
    top = TITLE_PX + CAPTION_PX
    left = px[top : top + 64 * z, : 64 * z][::z, ::z]
    right = px[top : top + 64 * z, 64 * z + PANEL_GAP_PX :][::z, ::z]
    assert np.abs(left[15, 15] - 100).max() > 20 and np.abs(left[50, 50] - 100).max() <= 2
    assert np.abs(right[50, 50] - 100).max() > 20 and np.abs(right[15, 15] - 100).max() <= 2
    assert np.abs(left[15, 15] - right[50, 50]).max() <= 2  # same class, same colour
    assert not _band_is_blank(px[:TITLE_PX]) and not _band_is_blank(px[top + 64 * z :])


def test_draw_instances_checks_lengths(tmp_path):
    with pytest.raises(ValueError, match="masks"):
        draw_instances(_image(), np.zeros((2, 75, 101)), [0], [0.5], None, tmp_path / "x.png")


def test_draw_target_grids_size(tmp_path):
    levels = []
    for s, hw in ((8, 16), (4, 8)):
        cate = np.full((s, s), -1)
        owner = np.full((s, s), -1)
        cate[1:3, 1:3], owner[1:3, 1:3] = 0, 0
        cate[s - 1, s - 1], owner[s - 1, s - 1] = 2, 1
        num_pos = int((owner >= 0).sum())
        mt = np.zeros((num_pos, hw, hw), np.uint8)
        mt[:, 1:4, 1:4] = 1
        levels.append({"category": cate, "owner": owner, "mask_targets": mt})
    out = draw_target_grids(_image(64, 64), levels, tmp_path / "grids.png", class_names=["a", "b", "c"],
                            panel_px=128)
    w, h = _png_size(out)
    assert w == 3 * 128 and h > TITLE_PX + 2 * 128  # title, two level rows, legend
    px = _rgb(out)
    assert not _band_is_blank(px[:TITLE_PX]) and not _band_is_blank(px[TITLE_PX + 2 * 128 :])


def test_draw_target_grids_rejects_mismatched_masks(tmp_path):
    cate = np.full((4, 4), -1)
    cate[0, 0] = 1
    with pytest.raises(ValueError, match="mask targets"):
        draw_target_grids(_image(64, 64), [{"category": cate, "owner": cate * 0 + (cate >= 0) - 1,
                                             "mask_targets": np.zeros((3, 8, 8))}], tmp_path / "g.png")


def test_training_curves_from_history_and_csv(tmp_path):
    hist = {"loss": [3.0, 2.0, 1.5], "focal_loss": [1.0, 0.7, 0.5], "dice_loss": [2.0, 1.3, 1.0],
            "val_loss": [3.1, 2.2, 1.8]}
    assert _png_size(plot_training_curves(hist, tmp_path / "h.png")) == (1600, 440)
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "dice_loss", "focal_loss", "loss", "lr"])
        for e in range(4):
            w.writerow([e, 2 - 0.3 * e, 1 - 0.1 * e, 3 - 0.4 * e, 0.01 if e < 3 else 0.001])
    assert _png_size(plot_training_curves(str(log), tmp_path / "c.png")) == (1600, 440)
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "m.png")


def test_lr_steps_are_the_decays_not_the_warmup():
    # warm-up over the first three epochs, then x0.1 twice
    lr = [0.002, 0.006, 0.01, 0.01, 0.001, 0.001, 0.0001]
    steps = lr_steps(lr)
    assert [e for e, _ in steps] == [4, 6]
    assert [round(f, 6) for _, f in steps] == [0.1, 0.1]
    assert lr_steps([0.01, 0.01]) == [] and lr_steps([]) == []


def test_training_curves_draw_the_lr_steps(tmp_path):
    """The same log with and without a learning-rate step gives different pictures: the step
    is drawn (a vertical line in every loss panel)."""
    base = {"loss": [3.0, 2.0, 1.5, 1.2], "focal_loss": [1.0, 0.7, 0.5, 0.4], "dice_loss": [2.0, 1.3, 1.0, 0.8]}
    flat = _rgb(plot_training_curves(dict(base, lr=[0.01] * 4), tmp_path / "flat.png"))
    step = _rgb(plot_training_curves(dict(base, lr=[0.01, 0.01, 0.001, 0.001]), tmp_path / "step.png"))
    diff = np.abs(flat - step).sum(axis=-1) > 0
    # the line sits between epochs 2 and 3 in each panel: the difference spans many rows of
    # the first (total loss) panel, not just its legend
    first_panel = diff[:, : flat.shape[1] // 4]
    assert first_panel.any(axis=1).sum() > 150


def test_training_curves_accept_csvlogger_na_cells(tmp_path):
    """CSVLogger writes NA for validation metrics on epochs without a validation pass."""
    log = tmp_path / "history.csv"
    log.write_text("epoch,dice_loss,focal_loss,loss,val_loss\n0,2.0,1.0,3.0,NA\n1,1.5,0.8,2.3,NA\n")
    out = plot_training_curves(log, tmp_path / "curves.png")
    assert Path(out).is_file() and Path(out).stat().st_size > 0
