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


def _coco_dt(coco_gt, results):
    """The results as a pycocotools COCO (boxes from the masks where a result has none)."""
    results = [dict(r) for r in results]  # loadRes adds numpy fields to the dicts it gets
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(results)
    # loadRes rejects an empty list; an empty result set scores 0 wherever there is GT.
    coco_dt = COCO()
    coco_dt.dataset = {"images": coco_gt.dataset["images"], "annotations": [],
                       "categories": coco_gt.dataset["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def coco_eval(coco_gt, results, iou_type="segm", verbose=False, coco_dt=None) -> COCOeval:
    """COCOeval of ``results`` (``segm``: the masks; ``bbox``: the masks' tight boxes, which
    pycocotools derives from each result's RLE), evaluated, accumulated and summarised."""
    coco_dt = _coco_dt(coco_gt, results) if coco_dt is None else coco_dt
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.params.imgIds = sorted(coco_gt.getImgIds())
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_mask_ap(coco_gt, results, verbose=False):
    """Run COCOeval (segm) and return ``{AP, AP50, AP75, APs, APm, APl}`` (0..1; -1 where
    the ground truth has no object of that size, as COCO)."""
    return summary_metrics(coco_eval(coco_gt, results, "segm", verbose))


def summary_metrics(ev: COCOeval) -> dict:
    """``{AP, AP50, AP75, APs, APm, APl}`` of an evaluated COCOeval."""
    return {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}


def per_class_ap(ev: COCOeval) -> list:
    """AP (IoU 0.50:0.95) and AP50 of each category of an evaluated COCOeval, all areas, 100
    detections: ``[{category_id, AP, AP50}]`` in the order of ``ev.params.catIds``; -1 for a
    category with no ground truth."""
    precision = ev.eval["precision"]  # (T IoU thresholds, R recall points, K classes, A areas, M max dets)
    iou50 = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - 0.5)))
    out = []
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p50 = p[iou50]
        out.append({"category_id": int(cid),
                    "AP": float(p[p > -1].mean()) if (p > -1).any() else -1.0,
                    "AP50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0})
    return out


def pr_curves(ev: COCOeval) -> dict:
    """Precision against recall at each IoU threshold of an evaluated COCOeval (all areas,
    100 detections), averaged over the categories that have ground truth:
    ``{"recall": (R,), "iou_thresholds": (T,), "precision": (T, R)}`` (-1 where no category
    reaches that recall)."""
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    valid = precision > -1
    counts = valid.sum(axis=2)
    mean = np.where(counts > 0, np.where(valid, precision, 0).sum(axis=2) / np.maximum(counts, 1), -1.0)
    return {"recall": np.asarray(ev.params.recThrs, float), "iou_thresholds": np.asarray(ev.params.iouThrs, float),
            "precision": mean}


def match_instances(coco_gt, coco_dt, num_classes, category_ids=None, iou_thr=0.5, score_thr=0.3):
    """Confusion matrix and per-image counts, predictions matched to ground truth by mask IoU.

    Per image, the predictions scored at least ``score_thr`` are taken best first and each
    is matched to the unmatched (non-crowd) ground-truth object of highest IoU >= ``iou_thr``,
    whatever the two classes (so a right mask with the wrong class is a confusion, not a
    miss). Unmatched ground truth is counted as predicted "background", unmatched
    predictions as background predicted as their class. Predictions on crowd regions
    (IoU >= ``iou_thr`` with an ``iscrowd`` object) are left out, as COCOeval leaves them.

    Returns:
        ``{"matrix": (C+1, C+1) int, rows ground truth, columns prediction, index C =
        background; "per_image": {image_id: {tp, fp, fn, f1}}}``; tp counts matches of the
        right class.
    """
    index_of = ({int(cid): c for c, cid in enumerate(category_ids)} if category_ids is not None
                else {c + 1: c for c in range(num_classes)})
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    per_image = {}
    for iid in sorted(coco_gt.getImgIds()):
        gts = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[iid]))
        dts = [d for d in coco_dt.loadAnns(coco_dt.getAnnIds(imgIds=[iid])) if d["score"] >= score_thr]
        dts.sort(key=lambda d: -d["score"])
        real = [g for g in gts if not g.get("iscrowd", 0)]
        crowd = [g for g in gts if g.get("iscrowd", 0)]
        g_rle = [coco_gt.annToRLE(g) for g in real]
        d_rle = [d["segmentation"] for d in dts]
        ious = (np.asarray(mask_utils.iou(d_rle, g_rle, [0] * len(g_rle))).reshape(len(d_rle), len(g_rle))
                if d_rle and g_rle else np.zeros((len(d_rle), len(g_rle))))
        on_crowd = np.zeros(len(d_rle), bool)
        if d_rle and crowd:
            c_rle = [coco_gt.annToRLE(g) for g in crowd]
            on_crowd = (np.asarray(mask_utils.iou(d_rle, c_rle, [1] * len(c_rle))).reshape(len(d_rle), -1)
                        >= iou_thr).any(axis=1)
        taken = np.zeros(len(g_rle), bool)
        tp = fp = 0
        for i, d in enumerate(dts):
            pc = index_of.get(int(d["category_id"]), bg)
            cand = np.where(~taken & (ious[i] >= iou_thr))[0] if len(g_rle) else np.zeros(0, int)
            if len(cand):
                j = cand[np.argmax(ious[i, cand])]
                taken[j] = True
                gc = index_of.get(int(real[j]["category_id"]), bg)
                matrix[gc, pc] += 1
                tp += int(gc == pc)
                fp += int(gc != pc)
            elif not on_crowd[i]:
                matrix[bg, pc] += 1
                fp += 1
        for j in np.where(~taken)[0]:
            matrix[index_of.get(int(real[j]["category_id"]), bg), bg] += 1
        fn = len(real) - tp
        f1 = 1.0 if len(real) == 0 and tp + fp == 0 else 2 * tp / max(2 * tp + fp + fn, 1)
        per_image[int(iid)] = {"tp": tp, "fp": fp, "fn": fn, "f1": float(f1), "objects": len(real)}
    return {"matrix": matrix, "per_image": per_image}


def format_metrics(metrics):
    """A table of the metrics in percent: the mask row, and the box row when there is one."""
    def row(prefix):
        return " ".join(f"{100 * metrics[prefix + k]:6.1f}" if metrics[prefix + k] >= 0 else f"{'-':>6}"
                        for k in METRICS)

    lines = ["      " + " ".join(f"{k:>6}" for k in METRICS), "mask  " + row("")]
    if all(f"box_{k}" in metrics for k in METRICS):
        lines.append("box   " + row("box_"))
    return "\n".join(lines)


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
        :func:`score_results`'s report plus ``num_images``, ``num_detections``, ``table``
        and ``class_table`` (printable); ``metrics_path`` gets all but the printable tables.
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
    report = score_results(coco_gt, results, int(model_config.num_classes), category_ids=category_ids,
                           class_names=class_names, verbose=verbose)
    report.update(num_images=len(image_ids), num_detections=len(results))
    if metrics_path is not None:
        write_json(metrics_path, report)
    report["table"] = format_metrics(report)
    report["class_table"] = format_per_class(report["per_class"])
    return report


def score_results(coco_gt, results, num_classes, *, category_ids=None, class_names=None, verbose=False,
                  confusion_iou=0.5, confusion_score=0.3) -> dict:
    """Everything solo-tf reports about a set of COCO results against their ground truth.

    Returns a JSON-ready dict: the mask metrics ``AP`` ... ``APl`` (0..1, -1 where COCO has
    none), the same for boxes as ``box_AP`` ... ``box_APl`` (the masks' tight boxes);
    ``per_class``: per class ``index``, ``name``, ``category_id``, ``gt_instances``, mask
    ``AP`` / ``AP50`` and ``box_AP`` / ``box_AP50``; ``pr``: mask precision against recall
    per IoU threshold (:func:`pr_curves`); ``confusion``: ``labels`` (class names and
    ``background``), ``matrix`` (rows ground truth, columns prediction; matched at mask IoU
    ``confusion_iou``, predictions scored >= ``confusion_score``, :func:`match_instances`);
    ``per_image``: ``{image_id: {tp, fp, fn, f1, objects}}`` from the same matching.
    """
    coco_dt = _coco_dt(coco_gt, results)
    segm = coco_eval(coco_gt, results, "segm", verbose, coco_dt=coco_dt)
    bbox = coco_eval(coco_gt, results, "bbox", False, coco_dt=coco_dt)
    report = summary_metrics(segm)
    report.update({f"box_{k}": v for k, v in summary_metrics(bbox).items()})
    ids = list(category_ids) if category_ids is not None else [c + 1 for c in range(num_classes)]
    mask_ap = {r["category_id"]: r for r in per_class_ap(segm)}
    box_ap = {r["category_id"]: r for r in per_class_ap(bbox)}
    names = [class_names[c] if class_names is not None and c < len(class_names) else str(c)
             for c in range(num_classes)]
    report["per_class"] = [
        {"index": c, "name": names[c], "category_id": int(cid),
         "gt_instances": len(coco_gt.getAnnIds(catIds=[int(cid)], iscrowd=False)),
         "AP": mask_ap.get(int(cid), {}).get("AP", -1.0), "AP50": mask_ap.get(int(cid), {}).get("AP50", -1.0),
         "box_AP": box_ap.get(int(cid), {}).get("AP", -1.0), "box_AP50": box_ap.get(int(cid), {}).get("AP50", -1.0)}
        for c, cid in enumerate(ids)
    ]
    curves = pr_curves(segm)
    report["pr"] = {k: np.asarray(v).tolist() for k, v in curves.items()}
    matched = match_instances(coco_gt, coco_dt, num_classes, category_ids, confusion_iou, confusion_score)
    report["confusion"] = {"labels": names + ["background"], "matrix": matched["matrix"].tolist(),
                           "iou_thr": confusion_iou, "score_thr": confusion_score}
    report["per_image"] = {str(k): v for k, v in matched["per_image"].items()}
    return report


def format_per_class(per_class) -> str:
    """A table of the per-class metrics (percent), one row per class."""
    width = max([len("class")] + [len(r["name"]) for r in per_class])
    lines = [f"{'class':<{width}} {'id':>5} {'gt':>6} {'AP':>6} {'AP50':>6} {'boxAP':>6} {'box50':>6}"]
    for r in per_class:
        cells = [f"{100 * r[k]:6.1f}" if r[k] >= 0 else f"{'-':>6}" for k in ("AP", "AP50", "box_AP", "box_AP50")]
        lines.append(f"{r['name']:<{width}} {r['category_id']:>5} {r['gt_instances']:>6} " + " ".join(cells))
    return "\n".join(lines)


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
