"""COCO mask AP with pycocotools: in-memory ground truth, RLE results, and a dataset loop.

Host-side numpy code: no TensorFlow import; datasets are iterated through
``.as_numpy_iterator()`` when they have it (tf.data), else plainly. Detections become
per-image instances through :func:`solo_tf.inference.instances_from_detections`, the same
path :class:`~solo_tf.inference.Predictor` uses.

Category ids: the model's classes are 0-based; COCO's are whatever the annotation file says.
``category_ids`` (a sequence, ``category_ids[c]`` = COCO id of class c) maps them; without it
class c becomes id c + 1.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from solo_tf.decoder import MASK_STRIDE, decode, resize_bilinear
from solo_tf.inference import InferenceModels, instances_from_detections
from solo_tf.io import write_json

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _category_id(c, category_ids):
    c = int(c)
    if category_ids is None:
        return c + 1
    if not 0 <= c < len(category_ids):
        raise ValueError(f"class {c} has no entry in category_ids (length {len(category_ids)})")
    return int(category_ids[c])


def encode_mask(mask):
    """(h, w) binary mask -> COCO compressed RLE with a JSON-safe ``counts`` string."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def build_coco_gt(images, category_ids=None, class_names=None):
    """A pycocotools COCO ground truth built in memory.

    Args:
        images: iterable of dicts ``image_id`` int, ``masks`` (n, h, w) binary at the image's
            size, ``classes`` (n,) 0-based; optional ``height`` / ``width`` (default: the
            masks' shape; give them when n = 0).
        category_ids: optional class -> COCO id mapping.
        class_names: optional names of the classes (for the category table).

    Returns:
        ``pycocotools.coco.COCO`` with one annotation per non-empty mask (``iscrowd`` 0).
    """
    imgs, anns, used = [], [], set()
    for im in images:
        masks = np.asarray(im["masks"])
        classes = np.asarray(im["classes"]).reshape(-1)
        iid = int(im["image_id"])
        if masks.ndim != 3 or masks.shape[0] != classes.shape[0]:
            raise ValueError(f"image {iid}: masks must be (n, h, w) with one class each; got {masks.shape} "
                             f"and {classes.shape[0]} classes")
        h = int(im.get("height", masks.shape[1]))
        w = int(im.get("width", masks.shape[2]))
        if masks.shape[0] and masks.shape[1:] != (h, w):
            raise ValueError(f"image {iid}: masks are {masks.shape[1:]}, the image is {(h, w)}")
        imgs.append({"id": iid, "height": h, "width": w})
        for m, c in zip(masks, classes):
            if not m.any():
                continue  # an empty mask cannot be matched by anything; COCO has no such objects
            rle = encode_mask(m)
            cid = _category_id(c, category_ids)
            used.add((int(c), cid))
            anns.append({
                "id": len(anns) + 1, "image_id": iid, "category_id": cid, "segmentation": rle,
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            })
    if len({i["id"] for i in imgs}) != len(imgs):
        raise ValueError("build_coco_gt: duplicate image_id")
    if category_ids is not None:
        cats = [(c, int(cid)) for c, cid in enumerate(category_ids)]
    else:
        n = (max(c for c, _ in used) + 1) if used else 0
        if class_names is not None:
            n = max(n, len(class_names))
        cats = [(c, c + 1) for c in range(n)]
    categories = [{"id": cid, "name": class_names[c] if class_names and c < len(class_names) else str(c)}
                  for c, cid in cats]
    coco = COCO()
    coco.dataset = {"images": imgs, "annotations": anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco_gt(annotation_file):
    """pycocotools COCO of an instances JSON, ready for COCOeval.

    Annotation files written by other tools often leave out ``area``, ``bbox`` or
    ``iscrowd``, which COCOeval needs; they are filled in from the segmentation here.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    for ann in coco.dataset.get("annotations", []):
        if "area" not in ann or "bbox" not in ann:
            rle = coco.annToRLE(ann)
            ann.setdefault("area", float(mask_utils.area(rle)))
            ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])
        ann.setdefault("iscrowd", 0)
    return coco


def to_coco_results(image_id, masks, classes, scores, category_ids=None):
    """One image's instances -> COCO result dicts (``segmentation`` RLE, ``score``).

    Args:
        masks: (m, h, w) binary at the original image size; classes (m,) 0-based; scores (m,).
    """
    out = []
    for m, c, s in zip(np.asarray(masks), np.asarray(classes).reshape(-1), np.asarray(scores).reshape(-1)):
        out.append({"image_id": int(image_id), "category_id": _category_id(c, category_ids),
                    "segmentation": encode_mask(m), "score": float(s)})
    return out


def coco_mask_ap(coco_gt, results, verbose=False):
    """Run COCOeval (segm) and return ``{AP, AP50, AP75, APs, APm, APl}`` (0..1; -1 where
    the ground truth has no object of that size, as COCO)."""
    results = [dict(r) for r in results]  # loadRes adds numpy fields to the dicts it gets
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(results)
    else:
        # loadRes rejects an empty list; an empty result set scores 0 wherever there is GT.
        coco_dt = COCO()
        coco_dt.dataset = {"images": coco_gt.dataset["images"], "annotations": [],
                           "categories": coco_gt.dataset["categories"]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt.createIndex()
    ev = COCOeval(coco_gt, coco_dt, "segm")
    ev.params.imgIds = sorted(coco_gt.getImgIds())
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}


def format_metrics(metrics):
    """A two-line table of the metrics, in percent."""
    head = " ".join(f"{k:>6}" for k in METRICS)
    row = " ".join(f"{100 * metrics[k]:6.1f}" if metrics[k] >= 0 else f"{'-':>6}" for k in METRICS)
    return f"{head}\n{row}"


def gt_from_targets(y_masks, y_classes, valid_size, orig_size):
    """Ground truth of one image from the padded training targets.

    The pipeline keeps masks only at stride :data:`~solo_tf.decoder.MASK_STRIDE` (4), so the
    evaluation ground truth is rebuilt from them: (N, H/4, W/4) upsampled bilinearly to the canvas (H, W), cropped to the
    valid region, resized to the original size and thresholded at 0.5. Edges are therefore
    ~2 input pixels coarse; pass ``coco_gt`` to :func:`evaluate_dataset` for exact ground
    truth.

    Returns:
        masks (n, h0, w0) bool, classes (n,) for the real (class >= 0) objects.
    """
    classes = np.asarray(y_classes).reshape(-1)
    real = classes >= 0
    masks = np.asarray(y_masks)[real].astype(np.float32)
    oh, ow = (int(v) for v in orig_size)
    vh, vw = (int(v) for v in valid_size)
    if masks.shape[0] == 0:
        return np.zeros((0, oh, ow), bool), classes[real]
    canvas = resize_bilinear(masks, (masks.shape[1] * MASK_STRIDE, masks.shape[2] * MASK_STRIDE))[:, :vh, :vw]
    return resize_bilinear(canvas, (oh, ow)) > 0.5, classes[real]


def evaluate_dataset(model, dataset, model_config, post_config, *, category_ids=None, class_names=None,
                     coco_gt=None, max_batches=None, results_path=None, metrics_path=None, verbose=False):
    """Predict, decode and score a ``(images, y, meta)`` dataset with COCO mask AP.

    Args:
        model: a SOLO model (raw outputs; decoded here) or an inference model whose outputs
            already hold ``detection_masks`` etc. (:func:`solo_tf.inference.build_inference_model`).
        dataset: batches of ``(images (B, H, W, 3), y, meta)`` (tf.data with ``with_meta``,
            or any iterable of numpy triples); meta holds ``image_id`` (B,), ``orig_size``
            (B, 2), ``valid_size`` (B, 2).
        model_config, post_config: the decoder's configuration.
        category_ids: optional class -> COCO id mapping (for both GT and results).
        class_names: optional names of the classes (the category table of a rebuilt GT).
        coco_gt: optional pycocotools COCO of the true annotations, matched by ``image_id``;
            without it the ground truth is rebuilt from ``y`` (see :func:`gt_from_targets`).
        max_batches: stop after this many batches.
        results_path: write the COCO results list (JSON) there, atomically.
        metrics_path: write the metrics (JSON) there, atomically.

    Returns:
        dict of the metrics ``AP`` ... ``APl`` plus ``num_images``, ``num_detections`` and
        ``table`` (printable).
    """
    if hasattr(model, "model_config"):  # a raw SOLO model: decode inside one compiled graph per canvas
        model = InferenceModels(model, post_config)
    iterator = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else iter(dataset)
    gt_images, results, image_ids = [], [], []
    for bi, batch in enumerate(iterator):
        if max_batches is not None and bi >= max_batches:
            break
        if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
            raise ValueError("evaluate_dataset needs batches of (images, y, meta); build the dataset with_meta=True")
        images, y, meta = batch
        dets = model.predict_on_batch(images) if hasattr(model, "predict_on_batch") else model(images)
        if "detection_masks" not in dets:
            dets = decode(dets, model_config, post_config)
        instances = instances_from_detections(dets, meta["valid_size"], meta["orig_size"],
                                              mask_thr=post_config.mask_thr, canvas_size=images.shape[1:3])
        for i, inst in enumerate(instances):
            iid = int(meta["image_id"][i])
            results += to_coco_results(iid, inst["masks"], inst["classes"], inst["scores"], category_ids)
            image_ids.append(iid)
            if coco_gt is None:
                orig, valid = meta["orig_size"][i], meta["valid_size"][i]
                masks, classes = gt_from_targets(y["masks"][i], y["classes"][i], valid, orig)
                gt_images.append({"image_id": iid, "masks": masks, "classes": classes,
                                  "height": int(orig[0]), "width": int(orig[1])})
    if not image_ids:
        raise ValueError("evaluate_dataset: the dataset gave no images")
    if coco_gt is None:
        if category_ids is None:
            category_ids = list(range(1, int(model_config.num_classes) + 1))
        coco_gt = build_coco_gt(gt_images, category_ids, class_names)
    else:
        missing = sorted(set(image_ids) - set(coco_gt.getImgIds()))
        if missing:
            raise ValueError(f"evaluate_dataset: image_id(s) {missing[:5]} not in the given coco_gt")
        coco_gt = _subset(coco_gt, image_ids)
    if results_path is not None:
        write_json(results_path, results)
    metrics = coco_mask_ap(coco_gt, results, verbose=verbose)
    report = dict(metrics, num_images=len(image_ids), num_detections=len(results))
    if metrics_path is not None:
        write_json(metrics_path, report)
    report["table"] = format_metrics(metrics)
    return report


def _subset(coco_gt, image_ids):
    """The given COCO restricted to ``image_ids`` (the evaluation covers only those)."""
    ids = set(image_ids)
    sub = COCO()
    sub.dataset = {
        "images": [im for im in coco_gt.dataset["images"] if im["id"] in ids],
        "annotations": [a for a in coco_gt.dataset["annotations"] if a["image_id"] in ids],
        "categories": coco_gt.dataset["categories"],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        sub.createIndex()
    return sub
