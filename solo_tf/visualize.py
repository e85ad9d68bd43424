"""Pictures: instance overlays, the target grid of each pyramid level, training curves.

Matplotlib through its object API and the Agg canvas (no pyplot, so no global backend is
switched and nothing needs a display). Every function writes a PNG atomically (temporary
name, then ``os.replace``) and returns its path.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100


def _palette(n):
    """n distinct RGB colours in [0, 1] (golden-angle hues, fixed)."""
    import colorsys

    return np.array([colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95) for i in range(max(n, 1))])


def _as_rgb(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {image.shape}")
    image = image.astype(np.float32)
    return np.clip(image / 255.0 if image.max() > 1.0 else image, 0.0, 1.0)


def _figure(width_in, height_in):
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot state, no display
    return fig


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=_DPI)
    os.replace(tmp, path)
    return str(path)


def draw_instances(image, masks, classes, scores, class_names, path, score_thr=0.0, alpha=0.5):
    """Overlay instance masks with ``name score`` labels; the PNG has the image's pixel size.

    Args:
        image: (h, w, 3) RGB, 0-255 (or 0-1 floats).
        masks: (n, h, w) binary; classes: (n,) 0-based; scores: (n,).
        class_names: names indexed by class (None: the class number).
        path: output PNG.
        score_thr: instances scored below are not drawn.
    """
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    masks = np.asarray(masks).astype(bool).reshape(-1, h, w) if np.size(masks) else np.zeros((0, h, w), bool)
    classes = np.asarray(classes).reshape(-1)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if not (len(masks) == len(classes) == len(scores)):
        raise ValueError(f"draw_instances: {len(masks)} masks, {len(classes)} classes, {len(scores)} scores")
    colours = _palette(len(masks))
    out = rgb.copy()
    labels = []
    for i, (m, c, s) in enumerate(zip(masks, classes, scores)):
        if s < score_thr or not m.any():
            continue
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
        ys, xs = np.nonzero(m)
        name = class_names[int(c)] if class_names is not None and 0 <= int(c) < len(class_names) else str(int(c))
        labels.append((xs.min(), ys.min(), f"{name} {s:.2f}", colours[i]))
    fig = _figure(w / _DPI, h / _DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(out, interpolation="nearest")
    for x, y, text, colour in labels:
        ax.text(x, y, text, fontsize=max(5, min(10, w / 60)), color="white", va="top", ha="left",
                bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"))
    ax.set_axis_off()
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    return _save(fig, path)


def draw_target_grids(image, targets_per_level, path, class_names=None, panel_px=256):
    """The positive cells of every pyramid level, coloured by the object that owns them,
    beside that level's mask targets.

    One row per level, three panels of ``panel_px`` square pixels each: the image with the
    S x S grid and the positive cells filled in the owner's colour; the category grid
    (class name of each positive cell); the mask targets, each painted in its owner's colour.
    The PNG is (3 * panel_px) x (L * panel_px) pixels.

    Args:
        image: (H, W, 3) RGB 0-255, the padded network input.
        targets_per_level: list over levels of dicts ``category`` (S, S) int (-1 background),
            ``owner`` (S, S) int (-1 none) and optional ``mask_targets`` (P, h, w) 0/1, one
            per positive cell in ascending k = i*S + j (the golden-case layout).
        path: output PNG.
        class_names: optional names by class.
    """
    rgb = _as_rgb(image)
    H, W = rgb.shape[:2]
    levels = list(targets_per_level)
    if not levels:
        raise ValueError("draw_target_grids needs at least one level")
    owners_all = [np.asarray(t["owner"]) for t in levels]
    num_owners = max([int(o.max()) + 1 for o in owners_all] + [1])
    colours = _palette(num_owners)
    size = panel_px / _DPI
    fig = _figure(3 * size, len(levels) * size)
    for lvl, t in enumerate(levels):
        cate, owner = np.asarray(t["category"]), np.asarray(t["owner"])
        s = cate.shape[0]
        if cate.shape != (s, s) or owner.shape != (s, s):
            raise ValueError(f"level {lvl}: category and owner must be (S, S), got {cate.shape}, {owner.shape}")
        # Each panel leaves 4 px at the bottom and sides and 14 px at the top for its title.
        fy, fx = 1 / (len(levels) * panel_px), 1 / (3 * panel_px)
        y0 = 1 - (lvl + 1) / len(levels)
        axes = [fig.add_axes((c / 3 + 4 * fx, y0 + 4 * fy, 1 / 3 - 8 * fx, 1 / len(levels) - 18 * fy))
                for c in range(3)]

        # 1. image + grid + positive cells
        cell_rgb = np.zeros((s, s, 4))
        pos = owner >= 0
        cell_rgb[pos, :3] = colours[owner[pos]]
        cell_rgb[pos, 3] = 0.55
        axes[0].imshow(rgb, extent=(0, W, H, 0))
        axes[0].imshow(cell_rgb, extent=(0, W, H, 0), interpolation="nearest")
        for g in range(1, s):
            axes[0].axhline(g * H / s, color="white", lw=0.3, alpha=0.6)
            axes[0].axvline(g * W / s, color="white", lw=0.3, alpha=0.6)
        axes[0].set_title(f"level {lvl}: S={s}, {int(pos.sum())} positive", fontsize=7, pad=2)

        # 2. category grid
        grid = np.ones((s, s, 3)) * 0.15
        grid[pos] = colours[owner[pos]]
        axes[1].imshow(grid, interpolation="nearest")
        if s <= 40:
            for i, j in zip(*np.nonzero(cate >= 0)):
                c = int(cate[i, j])
                name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
                axes[1].text(j, i, name[:3], fontsize=max(3, 140 / s / 2), ha="center", va="center", color="black")
        axes[1].set_title("category grid (colour = owner)", fontsize=7, pad=2)

        # 3. mask targets in owner colours
        masks = t.get("mask_targets")
        if masks is not None and len(masks):
            masks = np.asarray(masks).astype(bool)
            owners = owner.reshape(-1)[owner.reshape(-1) >= 0]
            if len(owners) != len(masks):
                raise ValueError(f"level {lvl}: {len(masks)} mask targets for {len(owners)} positive cells")
            canvas = np.zeros(masks.shape[1:] + (3,))
            for m, o in zip(masks, owners):
                canvas[m] = colours[o]
            axes[2].imshow(canvas, interpolation="nearest")
        else:
            axes[2].imshow(np.zeros((2, 2, 3)))
        axes[2].set_title("mask targets", fontsize=7, pad=2)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def _read_history(history_or_csv):
    if hasattr(history_or_csv, "history"):  # a keras.callbacks.History
        history_or_csv = history_or_csv.history
    if isinstance(history_or_csv, dict):
        return {k: [float(v) for v in vals] for k, vals in history_or_csv.items()}
    path = Path(history_or_csv)
    if not path.exists():
        raise FileNotFoundError(f"training log not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: the CSV log has no rows")
    out = {}
    for key in rows[0]:
        try:
            # CSVLogger writes "NA" for a metric an epoch did not produce (no validation pass)
            out[key] = [float(r[key]) if r[key] not in ("", None, "NA") else float("nan") for r in rows]
        except ValueError as e:
            raise ValueError(f"{path}: column {key!r} is not numeric: {e}") from None
    return out


def plot_training_curves(history_or_csv, path):
    """Total, focal and Dice loss per epoch (and their ``val_`` twins when logged).

    Args:
        history_or_csv: a Keras ``History``, its ``.history`` dict, or a ``CSVLogger`` file
            with columns ``loss``, ``focal_loss``, ``dice_loss`` (optional ``val_*``, ``epoch``).
        path: output PNG, 1200 x 400 pixels.
    """
    hist = _read_history(history_or_csv)
    keys = ("loss", "focal_loss", "dice_loss")
    if not any(k in hist for k in keys):
        raise ValueError(f"no loss columns in the training log; found {sorted(hist)}")
    fig = _figure(12, 4)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, 3, i + 1)
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            if name in hist and not np.all(np.isnan(np.asarray(hist[name], float))):
                vals = hist[name]
                epochs = hist.get("epoch", list(range(len(vals))))
                ax.plot(np.asarray(epochs) + 1, vals, style, label=name)
        ax.set_title({"loss": "total", "focal_loss": "focal", "dice_loss": "Dice"}[key])
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
