"""Pictures: instance overlays (alone, or ground truth beside prediction; a video frame's,
:func:`annotate_frame`), the target grid of each pyramid level, training curves.

Matplotlib through its object API and the Agg canvas (no pyplot, so no global backend is
switched and nothing needs a display). Every picture has a title and a legend (class
colours, the score threshold, the learning-rate steps); every function writes a PNG
atomically (:func:`solo_tf.io.atomic_path`) and returns its path.

Instance pictures colour masks by class (one colour per class, the legend's), outline each
instance in its class colour and label it ``name score``. Images are drawn at an integer
zoom (:func:`zoom_for`) so that small images stay readable; the layout, in pixels from the
top: a title band of ``TITLE_PX``, a panel-caption band of ``CAPTION_PX``, the image panels
(``PANEL_GAP_PX`` apart), the legend band.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from solo_tf.io import atomic_path

_DPI = 100
TITLE_PX = 30
CAPTION_PX = 20
PANEL_GAP_PX = 8
_LEGEND_ROW_PX = 18
_LEGEND_ENTRY_PX = 120


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
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return str(path)


def zoom_for(height, width, target_px=256):
    """The integer zoom an image of (height, width) is drawn at: its long side reaches about
    ``target_px`` (small images enlarged, nearest neighbour), 1 for larger images."""
    return max(1, int(target_px) // max(int(height), int(width), 1))


def _name(c, class_names):
    c = int(c)
    return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)


def _legend_rows(num_entries, fig_w_px):
    ncol = max(1, fig_w_px // _LEGEND_ENTRY_PX)
    return ncol, max(1, math.ceil(num_entries / ncol))


def _draw_panels(panels, class_names, path, title, score_thr, alpha):
    """Image panels side by side with instance overlays, a title and a class legend.

    ``panels``: list of dicts ``image`` (h, w, 3), ``masks`` (n, h, w), ``classes`` (n,),
    optional ``scores`` (n,) (None: ground truth, drawn whole and unscored) and ``caption``.
    """
    rgbs = [_as_rgb(p["image"]) for p in panels]
    h, w = rgbs[0].shape[:2]
    if any(r.shape[:2] != (h, w) for r in rgbs):
        raise ValueError(f"all panels must have the same image size, got {[r.shape[:2] for r in rgbs]}")
    shown = []  # per panel: the (mask, class, score or None) drawn
    for p in panels:
        masks = np.asarray(p["masks"])
        masks = masks.astype(bool).reshape(-1, h, w) if masks.size else np.zeros((0, h, w), bool)
        classes = np.asarray(p["classes"]).reshape(-1).astype(int)
        scores = p.get("scores")
        scores = None if scores is None else np.asarray(scores, np.float32).reshape(-1)
        if len(masks) != len(classes) or (scores is not None and len(scores) != len(masks)):
            raise ValueError(f"draw_instances: {len(masks)} masks, {len(classes)} classes, "
                             f"{'no' if scores is None else len(scores)} scores")
        keep = [i for i in range(len(masks)) if masks[i].any() and (scores is None or scores[i] >= score_thr)]
        shown.append([(masks[i], classes[i], None if scores is None else float(scores[i])) for i in keep])
    num_classes = len(class_names) if class_names else max([c + 1 for s in shown for _, c, _ in s] + [1])
    colours = _palette(num_classes)
    present = sorted({int(c) for s in shown for _, c, _ in s})

    z = zoom_for(h, w)
    pw, ph = w * z, h * z
    fig_w = len(panels) * pw + (len(panels) - 1) * PANEL_GAP_PX
    entries = [(Patch(facecolor=colours[c % len(colours)], edgecolor="none"), _name(c, class_names)) for c in present]
    if any(p.get("scores") is not None for p in panels):
        entries.append((Line2D([], [], linestyle="none"), f"score >= {score_thr:.2f}"))
    if not entries:
        entries.append((Line2D([], [], linestyle="none"), "no instances"))
    ncol, rows = _legend_rows(len(entries), fig_w)
    legend_px = 8 + _LEGEND_ROW_PX * rows
    fig_h = TITLE_PX + CAPTION_PX + ph + legend_px
    fig = _figure(fig_w / _DPI, fig_h / _DPI)
    font = max(5.0, min(9.0, pw / 40))
    for k, (rgb, inst, p) in enumerate(zip(rgbs, shown, panels)):
        out = rgb.copy()
        for m, c, _ in inst:
            out[m] = (1 - alpha) * out[m] + alpha * colours[c % len(colours)]
        left = k * (pw + PANEL_GAP_PX)
        ax = fig.add_axes((left / fig_w, legend_px / fig_h, pw / fig_w, ph / fig_h))
        ax.imshow(out, interpolation="nearest")
        for m, c, s in inst:
            colour = colours[c % len(colours)]
            ax.contour(m.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
            ys, xs = np.nonzero(m)
            text = _name(c, class_names) if s is None else f"{_name(c, class_names)} {s:.2f}"
            ax.text(xs.min(), ys.min(), text, fontsize=font, color="white", va="top", ha="left",
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"))
        ax.set_axis_off()
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        caption = p.get("caption") or f"{len(inst)} instance{'s' if len(inst) != 1 else ''}"
        fig.text((left + pw / 2) / fig_w, 1 - (TITLE_PX + CAPTION_PX / 2) / fig_h, caption, fontsize=8,
                 ha="center", va="center")
    if title:
        fig.text(0.5, 1 - TITLE_PX / 2 / fig_h, title, fontsize=10, ha="center", va="center", weight="bold")
    fig.legend([e[0] for e in entries], [e[1] for e in entries], loc="lower center", ncol=ncol, frameon=False,
               fontsize=8, handlelength=1.2, columnspacing=1.0, borderaxespad=0.3)
    return _save(fig, path)


def draw_instances(image, masks, classes, scores, class_names, path, score_thr=0.0, alpha=0.5, title=None):
    """Overlay instance masks with ``name score`` labels, a title and a class legend.

    Args:
        image: (h, w, 3) RGB, 0-255 (or 0-1 floats).
        masks: (n, h, w) binary; classes: (n,) 0-based; scores: (n,).
        class_names: names indexed by class (None: the class number).
        path: output PNG: the image at :func:`zoom_for` x (``w*z`` wide) under a
            ``TITLE_PX + CAPTION_PX`` band, above the legend.
        score_thr: instances scored below are not drawn (the legend states it).
        title: the picture's title (default: "prediction").
    """
    return _draw_panels(
        [{"image": image, "masks": masks, "classes": classes, "scores": scores}],
        class_names, path, title or "prediction", score_thr, alpha,
    )


def annotate_frame(image, instances: dict, class_names=None, alpha: float = 0.5) -> np.ndarray:
    """One frame of an annotated video, drawn at the frame's own size (no figure): each
    instance's mask blended in its class colour (the colours of :func:`draw_instances`),
    outlined, and labelled ``name score`` at its box's top-left.

    Args:
        image: (h, w, 3) uint8 RGB.
        instances: as :class:`solo_tf.inference.Predictor` gives them: ``masks`` (n, h, w),
            ``classes`` (n,), ``scores`` (n,), optional ``boxes`` (n, 4) x1 y1 x2 y2 (the
            work per instance is then its box's area, not the frame's).
        class_names: names by class (None: the class number).

    Returns:
        (h, w, 3) uint8 RGB.
    """
    from PIL import Image, ImageDraw

    out = np.array(image, np.float32)
    masks, classes, scores = instances["masks"], np.asarray(instances["classes"]), np.asarray(instances["scores"])
    boxes = np.asarray(instances.get("boxes", np.zeros((len(masks), 4))), np.float32)
    colours = _palette(len(class_names) if class_names else int(classes.max(initial=0)) + 1) * 255.0
    h, w = out.shape[:2]
    labels = []
    for m, c, s, box in zip(masks, classes.astype(int), scores, boxes):
        if box[2] > box[0] and box[3] > box[1]:  # x2, y2 exclusive
            x0, y0, x1, y1 = int(box[0]), int(box[1]), int(np.ceil(box[2])), int(np.ceil(box[3]))
        else:
            ys, xs = np.nonzero(m)
            if not len(ys):
                continue
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        colour = colours[c % len(colours)]
        region, sub = out[y0:y1, x0:x1], np.asarray(m[y0:y1, x0:x1], bool)
        region[sub] = (1 - alpha) * region[sub] + alpha * colour
        inner = np.zeros_like(sub)  # a pixel is inside when its 4 neighbours are in the mask
        inner[1:-1, 1:-1] = sub[1:-1, 1:-1] & sub[:-2, 1:-1] & sub[2:, 1:-1] & sub[1:-1, :-2] & sub[1:-1, 2:]
        region[sub & ~inner] = colour
        name = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
        labels.append((x0, y0, f"{name} {float(s):.2f}", tuple(int(v) for v in colour)))
    picture = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for x, y, text, colour in labels:
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        draw.text((x, y), text, fill=(255, 255, 255))
    return np.asarray(picture)


def draw_comparison(image, truth, prediction, class_names, path, score_thr=0.0, alpha=0.5, title=None):
    """The ground truth beside the prediction for one image, with a title and a legend.

    Args:
        image: (h, w, 3) RGB 0-255.
        truth: dict ``masks`` (n, h, w), ``classes`` (n,).
        prediction: dict ``masks`` (m, h, w), ``classes`` (m,), ``scores`` (m,) (as
            :class:`solo_tf.inference.Predictor` returns it).
        class_names: names by class.
        path: output PNG, two panels (left ground truth, right prediction).
        score_thr: predictions scored below are not drawn.
        title: the picture's title.
    """
    n_true = int(sum(np.asarray(m).any() for m in np.asarray(truth["masks"]))) if np.size(truth["masks"]) else 0
    return _draw_panels(
        [
            {"image": image, "masks": truth["masks"], "classes": truth["classes"], "scores": None,
             "caption": f"ground truth ({n_true})"},
            {"image": image, "masks": prediction["masks"], "classes": prediction["classes"],
             "scores": prediction["scores"],
             "caption": f"prediction ({int(np.sum(np.asarray(prediction['scores']) >= score_thr))}, "
                        f"score >= {score_thr:.2f})"},
        ],
        class_names, path, title or "ground truth | prediction", score_thr, alpha,
    )


def draw_target_grids(image, targets_per_level, path, class_names=None, panel_px=256, title=None):
    """The positive cells of every pyramid level, coloured by the object that owns them,
    beside that level's mask targets.

    One row per level, three panels of ``panel_px`` square pixels each: the image with the
    S x S grid and the positive cells filled in the owner's colour; the category grid
    (class name of each positive cell); the mask targets, each painted in its owner's colour.
    The PNG is (3 * panel_px) wide and ``TITLE_PX + L * panel_px + legend`` high; the
    legend names each object (owner colour -> object number and class).

    Args:
        image: (H, W, 3) RGB 0-255, the padded network input.
        targets_per_level: list over levels of dicts ``category`` (S, S) int (-1 background),
            ``owner`` (S, S) int (-1 none) and optional ``mask_targets`` (P, h, w) 0/1, one
            per positive cell in ascending k = i*S + j (the golden-case layout).
        path: output PNG.
        class_names: optional names by class.
        title: the picture's title (default: "grid targets per pyramid level").
    """
    rgb = _as_rgb(image)
    H, W = rgb.shape[:2]
    levels = list(targets_per_level)
    if not levels:
        raise ValueError("draw_target_grids needs at least one level")
    owners_all = [np.asarray(t["owner"]) for t in levels]
    num_owners = max([int(o.max()) + 1 for o in owners_all] + [1])
    colours = _palette(num_owners)
    owner_class = {}  # object -> its class, read off the category grids
    for t in levels:
        cate, owner = np.asarray(t["category"]), np.asarray(t["owner"])
        for o, c in zip(owner[owner >= 0].tolist(), cate[owner >= 0].tolist()):
            owner_class.setdefault(int(o), int(c))
    entries = [(Patch(facecolor=colours[o], edgecolor="none"), f"object {o}: {_name(c, class_names)}")
               for o, c in sorted(owner_class.items())] or [(Line2D([], [], linestyle="none"), "no positive cells")]
    fig_w = 3 * panel_px
    ncol, rows = _legend_rows(len(entries), fig_w)
    legend_px = 8 + _LEGEND_ROW_PX * rows
    fig_h = TITLE_PX + len(levels) * panel_px + legend_px
    fig = _figure(fig_w / _DPI, fig_h / _DPI)
    for lvl, t in enumerate(levels):
        cate, owner = np.asarray(t["category"]), np.asarray(t["owner"])
        s = cate.shape[0]
        if cate.shape != (s, s) or owner.shape != (s, s):
            raise ValueError(f"level {lvl}: category and owner must be (S, S), got {cate.shape}, {owner.shape}")
        # Each panel leaves 4 px at the bottom and sides and 14 px at the top for its caption.
        bottom = fig_h - TITLE_PX - (lvl + 1) * panel_px
        axes = [fig.add_axes(((c * panel_px + 4) / fig_w, (bottom + 4) / fig_h, (panel_px - 8) / fig_w,
                              (panel_px - 18) / fig_h)) for c in range(3)]

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
                axes[1].text(j, i, _name(cate[i, j], class_names)[:3], fontsize=max(3, 140 / s / 2), ha="center",
                             va="center", color="black")
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
    fig.text(0.5, 1 - TITLE_PX / 2 / fig_h, title or "grid targets per pyramid level", fontsize=10, ha="center",
             va="center", weight="bold")
    fig.legend([e[0] for e in entries], [e[1] for e in entries], loc="lower center", ncol=ncol, frameon=False,
               fontsize=7, handlelength=1.2, columnspacing=1.0, borderaxespad=0.3)
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


def lr_steps(lr):
    """Where a per-epoch learning-rate column steps down (warm-up rises are not steps).

    Args:
        lr: (E,) the rate of each epoch's last step (``history.csv``'s ``lr`` column).

    Returns:
        list of ``(e, factor)``: the rate dropped by ``factor`` (< 1) between epoch e - 1 and
        epoch e (0-based rows).
    """
    lr = np.asarray(lr, float)
    out = []
    for e in range(1, len(lr)):
        if np.isfinite(lr[e - 1]) and np.isfinite(lr[e]) and lr[e - 1] > 0 and lr[e] < lr[e - 1] * (1 - 1e-6):
            out.append((e, float(lr[e] / lr[e - 1])))
    return out


AP_COLUMNS = ("val_mask_AP", "val_mask_AP50", "val_box_AP")  # what ValidationAP logs


def plot_training_curves(history_or_csv, path, title=None):
    """Total, focal and Dice loss per epoch (and their ``val_`` twins when logged), the
    learning rate, and the validation AP when the log has it (``train.val_every``,
    :data:`AP_COLUMNS`); dotted vertical lines mark the epochs where the learning rate
    stepped down (from the log's ``lr`` column, :class:`solo_tf.training.LearningRateLogger`).

    Args:
        history_or_csv: a Keras ``History``, its ``.history`` dict, or a ``CSVLogger`` file
            with columns ``loss``, ``focal_loss``, ``dice_loss`` (optional ``val_*``,
            ``epoch``, ``lr``).
        path: output PNG, 400 pixels wide per panel (four, five with AP) x 440, under a title.
        title: the picture's title (default: "training curves").
    """
    hist = _read_history(history_or_csv)
    keys = ("loss", "focal_loss", "dice_loss")
    if not any(k in hist for k in keys):
        raise ValueError(f"no loss columns in the training log; found {sorted(hist)}")
    n = max(len(v) for v in hist.values())
    epochs = np.asarray(hist.get("epoch", list(range(n))), float) + 1  # 1-based, as Keras prints
    lr = hist.get("lr", hist.get("learning_rate"))
    steps = lr_steps(lr) if lr is not None else []
    ap_keys = [k for k in AP_COLUMNS if k in hist and not np.all(np.isnan(np.asarray(hist[k], float)))]
    panels = keys + ("lr",) + (("ap",) if ap_keys else ())
    fig = _figure(4 * len(panels), 4.4)
    for i, key in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if key == "ap":
            for name in ap_keys:
                vals = np.asarray(hist[name], float)
                seen = ~np.isnan(vals)  # epochs without a validation run are empty (train.val_every)
                ax.plot(epochs[: len(vals)][seen], vals[seen], "-", marker="o", markersize=3, label=name)
            ax.set_ylim(bottom=0)
            ax.set_title("validation AP (COCO)")
        elif key == "lr":
            if lr is not None:
                # constant within an epoch up to the step: drawn as steps, centred on the epochs
                ax.step(epochs[: len(lr)], lr, where="mid", color="tab:green", label="learning rate")
                if len(lr) <= 40:
                    ax.plot(epochs[: len(lr)], lr, "o", color="tab:green", markersize=3)
                if np.nanmin(lr) > 0:
                    ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "no learning-rate column\nin the log", ha="center", va="center",
                        transform=ax.transAxes, fontsize=9)
            ax.set_title("learning rate (last step of each epoch)")
        else:
            for name, style in ((key, "-"), (f"val_{key}", "--")):
                if name in hist and not np.all(np.isnan(np.asarray(hist[name], float))):
                    vals = hist[name]
                    # markers while there are few epochs (a one-epoch run is a single point)
                    ax.plot(epochs[: len(vals)], vals, style, marker="o" if len(vals) <= 40 else None,
                            markersize=3, label=name)
            ax.set_title({"loss": "total loss", "focal_loss": "focal loss", "dice_loss": "Dice loss"}[key])
        for j, (e, factor) in enumerate(steps):  # the step happened between epochs e and e + 1 (1-based)
            ax.axvline(epochs[e] - 0.5, color="grey", linestyle=":", lw=1.2,
                       label="lr steps" if j == 0 else None)
            if key == "lr":
                ax.annotate(f"x{factor:.2g}", (epochs[e] - 0.5, 1.0), xycoords=("data", "axes fraction"),
                            fontsize=7, ha="left", va="top", color="grey")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs):
            ax.set_xlim(float(np.min(epochs)) - 0.5, float(np.max(epochs)) + 0.5)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "training curves", fontsize=11, weight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return _save(fig, path)


# --- evaluation pictures ---------------------------------------------------------------------------
def plot_pr_curves(pr, path, title=None):
    """Mask precision against recall at each COCO IoU threshold (0.50 ... 0.95), averaged
    over the classes with ground truth (:func:`solo_tf.evaluation.pr_curves`; ``pr`` its
    dict or the ``pr`` entry of ``metrics.json``). The legend gives each curve's AP (the
    mean precision over the 101 recall points). 800 x 600 pixels."""
    recall = np.asarray(pr["recall"], float)
    precision = np.asarray(pr["precision"], float)
    fig = _figure(8, 6)
    ax = fig.add_subplot(1, 1, 1)
    colours = _palette(len(pr["iou_thresholds"]))
    for t, thr in enumerate(pr["iou_thresholds"]):
        p = precision[t]
        shown = p > -1
        ap = float(p[shown].mean()) if shown.any() else 0.0
        ax.plot(recall[shown], p[shown], color=colours[t], lw=2.0 if thr in (0.5, 0.75) else 1.0,
                label=f"IoU {thr:.2f}: AP {100 * ap:.1f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (mean over classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    ax.set_title(title or "mask precision-recall per IoU threshold", fontsize=11, weight="bold")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(confusion, path, title=None, normalize=True):
    """The confusion matrix of :func:`solo_tf.evaluation.match_instances` (``confusion``:
    ``labels`` and ``matrix``, rows ground truth, columns prediction, last = background), as
    a heat map: each ground-truth row normalised to fractions (``normalize``; the counts are
    printed in the cells either way). About 100 + 40 x (classes + 1) pixels square."""
    labels = list(confusion["labels"])
    m = np.asarray(confusion["matrix"], float)
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    n = len(labels)
    side = max(5.0, 1.5 + 0.4 * n)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, shown.max()))
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if shown[i, j] > 0.5 * (1 if normalize else shown.max()) else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row" if normalize else "count")
    what = f"matched at mask IoU {confusion.get('iou_thr', 0.5):g}, score >= {confusion.get('score_thr', 0.3):g}"
    ax.set_title(title or f"confusion matrix ({what})", fontsize=10, weight="bold")
    fig.tight_layout()
    return _save(fig, path)


# --- the demo's pictures ---------------------------------------------------------------------------
def target_grid_levels(model, y) -> list:
    """The grid targets of the first image of ``y`` (the pipeline's padded ground truth, on
    either canvas of ``model``) per level, as :func:`draw_target_grids` takes them."""
    from keras import ops

    from solo_tf.decoder import MASK_STRIDE
    from solo_tf.targets import gather_mask_targets, grid_targets, positive_slots, resize_masks
    from solo_tf.variants import get_variant

    y = {k: v[:1] for k, v in y.items()}
    canvas = (y["masks"].shape[2] * MASK_STRIDE, y["masks"].shape[3] * MASK_STRIDE)  # either canvas of the model
    variant = get_variant(model.model_config).with_canvas(canvas)
    mc = variant.model_config
    levels = []
    for lvl, ((category, owner), stride) in enumerate(zip(grid_targets(y, mc), variant.mask_strides)):
        size = (canvas[0] // stride, canvas[1] // stride)
        s = mc.num_grids[lvl]
        _, owners, pos, _ = positive_slots(owner, s * s)
        targets = ops.convert_to_numpy(gather_mask_targets(resize_masks(y["masks"], size), owners))[0]
        n = int(ops.convert_to_numpy(pos).sum())
        levels.append({"category": ops.convert_to_numpy(category)[0], "owner": ops.convert_to_numpy(owner)[0],
                       "mask_targets": targets[:n]})
    return levels


def demo_pictures(model, records, target_example, out_dir, *, title="", score_thr=0.3) -> list:
    """The demo's pictures of a trained model, in ``out_dir``: ``prediction_<i>.png`` (ground
    truth beside prediction) for each of ``records`` (source records: ``image``, ``masks``,
    ``classes``, ``image_id``), ``target_grids.png`` (the training targets of
    ``target_example``, an (image on the canvas, padded ground truth batch of one) pair) and
    ``training_curves.png`` (from ``out_dir/history.csv``). Returns their paths."""
    from solo_tf.inference import Predictor

    out_dir = Path(out_dir)
    names = model.labels_config.names(model.model_config.num_classes)
    predictions = Predictor(model).predict([r["image"] for r in records])
    pictures = []
    for i, (r, pred) in enumerate(zip(records, predictions)):
        path = out_dir / f"prediction_{i}.png"
        draw_comparison(r["image"], {"masks": r["masks"], "classes": r["classes"]}, pred, names, path,
                        score_thr=score_thr, title=f"held-out image {int(r['image_id'])}: ground truth | prediction")
        pictures.append(str(path))
    image, y = target_example
    pictures.append(draw_target_grids(image, target_grid_levels(model, y), out_dir / "target_grids.png",
                                      class_names=names, title="training targets of held-out image 0"))
    pictures.append(plot_training_curves(out_dir / "history.csv", out_dir / "training_curves.png",
                                         title=f"{title}: training curves" if title else "training curves"))
    return pictures
