"""Pictures: each function writes a PNG of the expected pixel size, atomically."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from solo_tf.visualize import draw_instances, draw_target_grids, plot_training_curves


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size  # (w, h)


def _image(h=75, w=101):
    rng = np.random.RandomState(0)
    return rng.randint(0, 255, (h, w, 3)).astype(np.uint8)


def test_draw_instances_has_image_size(tmp_path):
    image = _image()
    masks = np.zeros((2, 75, 101), bool)
    masks[0, 10:40, 5:50] = True
    masks[1, 30:70, 60:95] = True
    out = draw_instances(image, masks, [0, 1], [0.9, 0.4], ["cat", "dog"], tmp_path / "inst.png")
    assert _png_size(out) == (101, 75)
    px = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # The overlay changes the pixels under a mask and leaves the rest of the image.
    assert np.abs(px[60:65, 70:80] - image[60:65, 70:80]).mean() > 10
    assert np.abs(px[72:75, 0:3] - image[72:75, 0:3]).mean() < 3
    assert not list(tmp_path.glob("*.tmp"))


def test_draw_instances_without_instances(tmp_path):
    out = draw_instances(_image(64, 64), np.zeros((0, 64, 64)), [], [], None, tmp_path / "none.png")
    assert _png_size(out) == (64, 64)


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
    assert _png_size(out) == (3 * 128, 2 * 128)


def test_draw_target_grids_rejects_mismatched_masks(tmp_path):
    cate = np.full((4, 4), -1)
    cate[0, 0] = 1
    with pytest.raises(ValueError, match="mask targets"):
        draw_target_grids(_image(64, 64), [{"category": cate, "owner": cate * 0 + (cate >= 0) - 1,
                                             "mask_targets": np.zeros((3, 8, 8))}], tmp_path / "g.png")


def test_training_curves_from_history_and_csv(tmp_path):
    hist = {"loss": [3.0, 2.0, 1.5], "focal_loss": [1.0, 0.7, 0.5], "dice_loss": [2.0, 1.3, 1.0],
            "val_loss": [3.1, 2.2, 1.8]}
    assert _png_size(plot_training_curves(hist, tmp_path / "h.png")) == (1200, 400)
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "dice_loss", "focal_loss", "loss"])
        for e in range(4):
            w.writerow([e, 2 - 0.3 * e, 1 - 0.1 * e, 3 - 0.4 * e])
    assert _png_size(plot_training_curves(str(log), tmp_path / "c.png")) == (1200, 400)
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "m.png")


def test_training_curves_accept_csvlogger_na_cells(tmp_path):
    """CSVLogger writes NA for validation metrics on epochs without a validation pass."""
    from solo_tf.visualize import plot_training_curves

    log = tmp_path / "history.csv"
    log.write_text("epoch,dice_loss,focal_loss,loss,val_loss\n0,2.0,1.0,3.0,NA\n1,1.5,0.8,2.3,NA\n")
    out = plot_training_curves(log, tmp_path / "curves.png")
    assert Path(out).is_file() and Path(out).stat().st_size > 0
