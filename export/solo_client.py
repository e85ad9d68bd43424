"""Client-side helpers shared by the runners and clients in this folder (numpy + Pillow only).

The deployment side does not install solo_tf or TensorFlow: a phone app, a LiteRT or ONNX
Runtime process, or a TF Serving client only needs to

1. letterbox an image into the network canvas (TFLite / ONNX; the SavedModel does it
   inside its graph): :func:`letterbox`;
2. run the exported graph;
3. paste each stride-4 mask back into the image and keep the filled slots:
   :func:`instances_from_outputs`;
4. draw / save them: :func:`draw_overlay`, :func:`write_results`.

The contract of the outputs (names, shapes, the letterbox) is ``solo_tf/export/__init__.py``'s module
docstring, and the ``*.json`` description written beside every export.
"""

from __future__ import annotations

import json
import sys
import os
from pathlib import Path

import numpy as np

MASK_STRIDE = 4

# A fixed, distinguishable palette (RGB) for instance overlays.
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
     (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)],
    np.uint8,
)


# --- input -----------------------------------------------------------------------------------
def read_image(path) -> np.ndarray:
    """An image file as (h, w, 3) uint8 RGB; a clear error for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def letterbox(image, canvas_size):
    """Fit one image into the canvas keeping its aspect ratio, top-left, zero padding.

    The same geometry as the training pipeline and the SavedModel's in-graph letterbox
    (s = min(H/h0, W/w0), size (h', w') = (round(h0*s), round(w0*s))); the resampling is
    Pillow's antialiased bilinear, which differs from TensorFlow's by a grey level or two
    on edges.

    Args:
        image: (h0, w0, 3) uint8 RGB.
        canvas_size: (H, W).

    Returns:
        canvas (H, W, 3) uint8, scale (h'/h0, w'/w0), offset (0.0, 0.0): canvas (y, x) =
        image (y, x) * scale + offset.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (h, w, 3), got {image.shape}")
    h0, w0 = image.shape[:2]
    height, width = (int(v) for v in canvas_size)
    s = min(height / h0, width / w0)
    nh = max(1, min(height, int(round(h0 * s))))
    nw = max(1, min(width, int(round(w0 * s))))
    resized = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((nw, nh), Image.BILINEAR))
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:nh, :nw] = resized
    return canvas, (nh / h0, nw / w0), (0.0, 0.0)


def load_metadata(path):
    """The description written beside an export (``model.tflite.json``, ``model.onnx.json``,
    ``<version>/assets.extra/solo_export.json``), or None when there is none."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        path = path / "assets.extra" / "solo_export.json"
    elif path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())


# --- output ----------------------------------------------------------------------------------
def paste_mask(mask, image_size, scale, offset=(0.0, 0.0), stride=MASK_STRIDE, threshold=0.5):
    """A mask on the canvas grid -> a bool mask of the original image.

    Image pixel (r, c) sits at canvas point ((r + 0.5) * sy + oy, (c + 0.5) * sx + ox); the
    mask (one cell per ``stride`` canvas pixels, cell centres at (i + 0.5) * stride) is
    sampled there bilinearly and thresholded, so a stride-4 0/1 mask comes back with smooth
    edges, close to the network's own full-size mask.

    Args:
        mask: (h, w) 0/1 (or soft) mask on the canvas at ``stride``.
        image_size: (h0, w0) of the original image.
        scale: (sy, sx) canvas pixels per image pixel; offset: (oy, ox) of the image on the
            canvas (the letterbox outputs).

    Returns:
        (h0, w0) bool.
    """
    m = np.asarray(mask, np.float32)
    h0, w0 = (int(v) for v in image_size)
    sy, sx = (float(v) for v in scale)
    oy, ox = (float(v) for v in offset)
    ys = ((np.arange(h0) + 0.5) * sy + oy) / stride - 0.5
    xs = ((np.arange(w0) + 0.5) * sx + ox) / stride - 0.5

    def axis(pos, n):
        pos = np.clip(pos, 0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(ys, m.shape[0])
    x0, x1, fx = axis(xs, m.shape[1])
    rows = m[y0] * (1 - fy)[:, None] + m[y1] * fy[:, None]  # (h0, w)
    return (rows[:, x0] * (1 - fx) + rows[:, x1] * fx) > threshold


def instances_from_outputs(outputs, index, image_size, scale, offset=(0.0, 0.0), boxes_in="canvas",
                           mask_stride=MASK_STRIDE, masks_in="canvas", class_names=None, category_ids=None):
    """One image's slots of an exported graph's outputs -> a list of instances.

    Args:
        outputs: dict of numpy arrays with a batch axis (the export's output names).
        index: the image's position in the batch.
        image_size: (h0, w0).
        scale, offset: the letterbox, (y, x) pairs: canvas = image * scale + offset.
        boxes_in: ``canvas`` (TFLite / ONNX) or ``image`` (SavedModel) pixels.
        mask_stride: canvas pixels per mask cell (4; 1 for full-size canvas masks).
        masks_in: ``canvas`` or ``image`` (SavedModel full-size masks: already the image's).
        class_names: names of the 0-based classes; category_ids: the id of each (the graph
            reports ids when the model has them).

    Returns:
        list of dicts ``class_id`` (what the graph reports), ``label``, ``score``, ``box``
        [x1, y1, x2, y2] image pixels, ``mask`` (h0, w0) bool; ordered by score.
    """
    n = int(np.asarray(outputs["num_detections"])[index])
    h0, w0 = (int(v) for v in image_size)
    names = _names_by_id(class_names, category_ids)
    found = []
    for k in range(n):
        mask = np.asarray(outputs["detection_masks"][index][k])
        if masks_in == "image":
            binary = mask[:h0, :w0] > 0
        else:
            binary = paste_mask(mask, (h0, w0), scale, offset, mask_stride)
        box = np.asarray(outputs["detection_boxes"][index][k], np.float64)
        if boxes_in == "canvas":
            (sy, sx), (oy, ox) = scale, offset
            box = (box - np.array([ox, oy, ox, oy])) / np.array([sx, sy, sx, sy])
        box = np.minimum(np.maximum(box, 0), [w0, h0, w0, h0])
        cls = int(np.asarray(outputs["detection_classes"])[index][k])
        found.append({
            "class_id": cls,
            "label": names.get(cls, str(cls)),
            "score": float(np.asarray(outputs["detection_scores"])[index][k]),
            "box": [round(float(v), 2) for v in box],
            "mask": binary,
        })
    return found


def _names_by_id(class_names, category_ids):
    if not class_names:
        return {}
    ids = category_ids if category_ids else range(len(class_names))
    return {int(i): str(n) for i, n in zip(ids, class_names)}


def rle_encode(mask):
    """Uncompressed COCO RLE of a bool mask: ``{"size": [h, w], "counts": [...]}`` in
    column-major order starting with a run of zeros (pycocotools reads it as it is)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def draw_overlay(image, instances, alpha=0.5):
    """The image with each instance's mask tinted, its box and its label. Returns a PIL image."""
    from PIL import Image, ImageDraw

    out = np.asarray(image, np.float32).copy()
    for i, inst in enumerate(instances):
        color = PALETTE[i % len(PALETTE)].astype(np.float32)
        m = inst["mask"]
        out[m] = out[m] * (1 - alpha) + color * alpha
    picture = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for i, inst in enumerate(instances):
        color = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        x1, y1, x2, y2 = inst["box"]
        if x2 > x1 and y2 > y1:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=color)
        draw.text((x1 + 2, y1 + 1), f"{inst['label']} {inst['score']:.2f}", fill=color)
    return picture


def write_results(image, instances, out_dir, stem, extra=None):
    """``<stem>_overlay.png`` and ``<stem>.json`` (instances with RLE masks) in ``out_dir``,
    each written whole (temporary name, then rename). Returns (png path, json path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}_overlay.png"
    js = out_dir / f"{stem}.json"
    tmp_png = out_dir / f".{stem}_overlay.png.tmp"
    draw_overlay(image, instances).save(tmp_png, format="PNG")
    os.replace(tmp_png, png)
    record = dict(extra or {})
    record["image_size"] = [int(image.shape[0]), int(image.shape[1])]
    record["instances"] = [
        {"class_id": d["class_id"], "label": d["label"], "score": round(d["score"], 6), "box": d["box"],
         "area": int(d["mask"].sum()), "mask_rle": rle_encode(d["mask"])}
        for d in instances
    ]
    tmp_js = out_dir / f".{stem}.json.tmp"
    tmp_js.write_text(json.dumps(record))
    os.replace(tmp_js, js)
    return png, js


def instances_from_serving(outputs, index, full_size_masks=False, class_names=None, category_ids=None):
    """One image of a SavedModel (TF Serving) response -> instances (see
    :func:`instances_from_outputs`). The response carries the letterbox (``letterbox_scale``,
    ``letterbox_offset``) and ``image_size``; boxes are already in image pixels.

    ``full_size_masks``: the export was made with full-size masks (its metadata says so):
    the masks are then already the image's, padded to the largest image of the batch.
    """
    h0, w0 = (int(v) for v in np.asarray(outputs["image_size"])[index])
    scale = tuple(float(v) for v in np.asarray(outputs["letterbox_scale"])[index])
    offset = tuple(float(v) for v in np.asarray(outputs["letterbox_offset"])[index])
    return instances_from_outputs(
        outputs, index, (h0, w0), scale, offset, boxes_in="image", masks_in="image" if full_size_masks else "canvas",
        class_names=class_names, category_ids=category_ids,
    )


# --- what every runner and client does with its results -----------------------------------------
def save_image_results(image, image_path, found, out_dir, score_thr=0.0, extra=None):
    """Keep the instances scored >= ``score_thr``, write ``<stem>_overlay.png`` and
    ``<stem>.json`` (:func:`write_results`) and return the runner's summary row."""
    found = [d for d in found if d["score"] >= score_thr]
    png, js = write_results(image, found, out_dir, Path(image_path).stem, extra=extra)
    return {"image": str(image_path), "overlay": str(png), "json": str(js), "detections": len(found)}


def save_serving_results(outputs, indices, images, image_paths, meta, out_dir, score_thr, extra):
    """One TF Serving response (rows = ``indices`` of ``images``) -> summary rows."""
    return [
        save_image_results(
            images[i], image_paths[i],
            instances_from_serving(outputs, row, bool(meta.get("full_size_masks", False)),
                                   meta.get("class_names"), meta.get("category_ids")),
            out_dir, score_thr, extra)
        for row, i in enumerate(indices)
    ]


def runtime_parser(description, model_help):
    """The command line of the LiteRT and ONNX Runtime runners."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("model", help=model_help)
    p.add_argument("images", nargs="+", help="image files (any size)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--score-thr", type=float, default=0.0, help="drop detections below this score")
    return p


SERVING_ERRORS = (FileNotFoundError, ValueError, RuntimeError, OSError)


def serving_parser(description):
    """The command line the TF Serving clients share (each adds where the server is)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--signature", default="image_bytes", choices=("image_bytes", "serving_default"))
    p.add_argument("--metadata", help="the export's assets.extra/solo_export.json (class names)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--score-thr", type=float, default=0.0)
    return p


def report(prog, fn, errors=(FileNotFoundError, ValueError)):
    """Run ``fn()``; print its summary as one JSON line (exit status 0), or ``prog: error``
    on stderr (exit status 1) for the errors a user can fix (a missing file, a bad image,
    a server that refuses)."""
    try:
        summary = fn()
    except errors as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
