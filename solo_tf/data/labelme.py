"""LabelMe JSON folders as a data source (``data.source: labelme``, :class:`LabelMeSourceConfig`).

One ``.json`` per image, as LabelMe saves them (the folder is searched recursively)::

    {"shapes": [{"label": "cat", "points": [[x, y], ...], "group_id": null,
                 "shape_type": "polygon"}, ...],
     "imagePath": "cat1.jpg", "imageData": null or base64 of the image file,
     "imageHeight": 480, "imageWidth": 640}

* ``polygon``, ``rectangle`` (two corners), ``circle`` (centre, a point on the rim; a
  polygon of :data:`CIRCLE_POINTS` points) and ``mask`` (a base64 PNG of the box between
  its two points) are regions; ``point``, ``line``, ``linestrip`` and ``points`` are not,
  and are counted (``stats["not_regions"]``) and left out.
* Shapes with the same ``label`` and ``group_id`` are the parts of one object: one
  instance mask. Without a ``group_id`` each shape is an object of its own.
* ``__ignore__`` regions are kept out of the targets, as COCO's ``iscrowd`` objects are,
  and written to COCO as crowd.
* The image is ``imageData`` when embedded, else ``imagePath`` relative to the JSON.
* Classes: ``class_names`` when given (a label not in it is a bad image), else a trained
  model's names (``labels.class_names``), else the training labels, sorted. Category ids
  are the class index + 1, as ``solo-tf convert`` writes them.

Bad input raises :class:`~solo_tf.data.errors.DataError` naming the JSON file and the shape
(``cats/1.json: shape 2 (label 'cat'): polygon with 2 points (< 3)``) or with ``skip_bad``
is counted (the rules of :mod:`solo_tf.data.annotated`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solo_tf.data.annotated import (
    IGNORE,
    AnnotatedImage,
    AnnotatedImages,
    Instance,
    Scan,
    SkipImage,
    folder_splits,
    image_size,
    point_eval_at,
)
from solo_tf.data.errors import BadRecordLog, DataError, Progress
from solo_tf.data.registry import register_source

NAME = "labelme"
IGNORE_LABEL = "__ignore__"
REGIONS = ("polygon", "rectangle", "circle", "mask")
NOT_REGIONS = ("point", "points", "line", "linestrip")
CIRCLE_POINTS = 32


@dataclass
class LabelMeSourceConfig:
    """``data.source: labelme``: folders of LabelMe JSON files (searched recursively)."""

    train: str | None = None
    val: str | None = None
    class_names: list[str] | None = None  # the class order; default: the training labels, sorted

    def validate(self) -> None:
        if self.class_names is not None and (not self.class_names or IGNORE_LABEL in self.class_names
                                             or len(set(self.class_names)) != len(self.class_names)):
            raise ValueError(f"data.labelme.class_names must be distinct labels other than {IGNORE_LABEL}, "
                             f"got {self.class_names}")


def _json_files(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: LabelMe folder not found")
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise DataError(f"{folder}: no LabelMe .json files in it")
    return files


def _read_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (truncated or corrupt?): {e.msg} at line {e.lineno}",
                        "malformed LabelMe file") from None
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: cannot read: {e}", "malformed LabelMe file") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(f"{path}: not a LabelMe file (no 'shapes' list)", "malformed LabelMe file")
    return data


def _embedded(path: Path) -> bytes:
    """The image file embedded in a LabelMe JSON (``imageData``)."""
    data = _read_json(path).get("imageData")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise DataError(f"{path}: imageData is not valid base64: {e}", "corrupt image file") from None


def _points(shape, where, scan):
    pts = shape.get("points")
    if not isinstance(pts, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pts):
        scan.bad_image("malformed polygon", f"{where}: 'points' must be a list of [x, y], got {str(pts)[:60]}")
    xy = [v for p in pts for v in p]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xy):
        scan.bad_image("malformed polygon", f"{where}: 'points' must be numbers, got {str(pts)[:60]}")
    return xy


def _two_points(xy, where, kind, scan):
    if len(xy) != 4:
        scan.bad_image("malformed polygon", f"{where}: a {kind} needs 2 points, got {len(xy) // 2}")
    return xy


def _polygon(shape, kind, h, w, where, scan):
    """A region shape as one polygon (flat pixel xy) or None (skipped: < 3 points)."""
    xy = _points(shape, where, scan)
    if kind == "rectangle":
        x1, y1, x2, y2 = _two_points(xy, where, kind, scan)
        xy = [x1, y1, x2, y1, x2, y2, x1, y2]
    elif kind == "circle":
        cx, cy, px, py = _two_points(xy, where, kind, scan)
        r = math.hypot(px - cx, py - cy)
        t = np.arange(CIRCLE_POINTS) * (2 * math.pi / CIRCLE_POINTS)
        xy = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel()
    return scan.polygon(xy, h, w, where)


def _mask_rle(shape, h, w, where, scan):
    """A ``mask`` shape (base64 PNG of the box between its two points) as a pycocotools RLE."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    xy = _two_points(_points(shape, where, scan), where, "mask", scan)
    try:
        x1, y1, x2, y2 = (int(v) for v in xy)
        with Image.open(io.BytesIO(base64.b64decode(shape.get("mask"), validate=True))) as im:
            crop = np.asarray(im.convert("L")) > 0
    except Exception as e:  # bad base64 / PNG / points
        scan.bad_image("malformed mask", f"{where}: mask is not a base64 PNG over its two points: {e}")
    if crop.shape != (y2 - y1 + 1, x2 - x1 + 1) or x1 < 0 or y1 < 0 or x2 >= w or y2 >= h:
        scan.bad_image("malformed mask", f"{where}: mask of {crop.shape[1]}x{crop.shape[0]} does not fit its "
                                         f"points ({x1}, {y1})-({x2}, {y2}) in the {w}x{h} image")
    full = np.zeros((h, w), np.uint8)
    full[y1:y2 + 1, x1:x2 + 1] = crop
    rle = mask_utils.encode(np.asfortranarray(full))
    return rle


class LabelMeFolder(AnnotatedImages):
    """The LabelMe files of one folder, scanned and validated (see the module docstring).

    Args:
        folder: searched recursively for ``.json`` files.
        class_names: the class order, or None: the folder's labels, sorted.
        skip_bad: skip and count bad records in :attr:`bad` instead of raising.
        progress: progress lines on stderr while scanning.
    """

    def __init__(self, folder, class_names=None, skip_bad: bool = False, progress: bool = True):
        self.folder = Path(folder)
        files = _json_files(self.folder)
        bad = BadRecordLog(str(self.folder))
        scan = Scan(bad, skip_bad)
        stats = {"objects": 0, "ignore_regions": 0, "not_regions": 0, "images_skipped": 0}
        found = []
        with Progress(len(files), f"scanning {self.folder}", enabled=progress) as bar:
            for path in files:
                try:
                    found.append(self._scan(path, scan, stats))
                except SkipImage:
                    stats["images_skipped"] += 1
                except DataError as e:
                    scan.log.handle(skip_bad, e.reason or "malformed LabelMe file", str(e))
                    stats["images_skipped"] += 1
                bar.update()
        labels = sorted({label for _, _, shapes in found for label, _ in shapes} - {IGNORE_LABEL})
        names = list(class_names) if class_names is not None else labels
        if not names:
            raise DataError(f"{self.folder}: no labelled regions, so no classes to train")
        index = {name: k for k, name in enumerate(names)}
        images = []
        for entry, where, shapes in found:
            unknown = sorted({label for label, _ in shapes} - set(index) - {IGNORE_LABEL})
            if unknown:
                try:
                    scan.bad_image("label not in class_names",
                                   f"{where}: label {unknown[0]!r} is not one of the {len(names)} class names")
                except SkipImage:
                    stats["images_skipped"] += 1
                    continue
            instances = []
            for label, inst in shapes:
                c = IGNORE if label == IGNORE_LABEL else index[label]
                instances.append(inst._replace(class_index=c))
            stats["objects"] += sum(1 for i in instances if i.class_index != IGNORE)
            stats["ignore_regions"] += sum(1 for i in instances if i.class_index == IGNORE)
            images.append(entry._replace(instances=instances))
        if stats["not_regions"] and progress:
            print(f"{self.folder}: {stats['not_regions']} shapes of type {'/'.join(NOT_REGIONS)} are not regions; "
                  "left out", file=sys.stderr)
        if bad.total and progress:
            print(bad.summary(), file=sys.stderr)
        super().__init__(images, names, bad, stats)

    def _scan(self, path: Path, scan: Scan, stats: dict):
        """One JSON file -> (AnnotatedImage without instances, its name, [(label, Instance)])."""
        data = _read_json(path)
        embedded = bool(data.get("imageData"))
        image_path = path.parent / str(data.get("imagePath") or "")
        if embedded:
            h, w = data.get("imageHeight"), data.get("imageWidth")
            if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
                from PIL import Image

                try:
                    with Image.open(io.BytesIO(_embedded(path))) as im:
                        w, h = im.size
                except Exception as e:  # corrupt embedded image
                    scan.bad_image("corrupt image file", f"{path}: imageData is not a readable image: {e}")
        else:
            if not data.get("imagePath"):
                scan.bad_image("missing image file", f"{path}: neither imageData nor imagePath")
            h, w = image_size(image_path, str(path), scan)
            declared = (data.get("imageHeight"), data.get("imageWidth"))
            if None not in declared and declared != (h, w):
                scan.bad_image("image size is not the annotated size",
                               f"{image_path}: image is {w}x{h} but {path} says {declared[1]}x{declared[0]}")
        name = Path(str(data.get("imagePath") or path.with_suffix(".png").name)).name
        entry = AnnotatedImage(path if embedded else image_path, name, int(h), int(w), None, str(path),
                               (lambda p=path: _embedded(p)) if embedded else None)
        groups: dict = {}  # (label, group id or shape number) -> [(segmentation kind, value)]
        for k, shape in enumerate(data["shapes"]):
            label = shape.get("label") if isinstance(shape, dict) else None
            where = f"{path}: shape {k}" + (f" (label {label!r})" if isinstance(label, str) else "")
            if not isinstance(label, str) or not label:
                scan.bad_image("malformed shape", f"{where}: needs a 'label' string, got {str(label)[:40]}")
            kind = shape.get("shape_type") or "polygon"
            if kind in NOT_REGIONS:
                stats["not_regions"] += 1
                continue
            if kind not in REGIONS:
                scan.bad_image("malformed shape", f"{where}: unknown shape_type {kind!r}")
            group = shape.get("group_id")
            key = (label, ("group", group) if group is not None else ("shape", k))
            part = ("rle", _mask_rle(shape, int(h), int(w), where, scan)) if kind == "mask" else (
                "poly", _polygon(shape, kind, int(h), int(w), where, scan))
            groups.setdefault(key, (where, []))[1].append(part)
        shapes = []
        for (label, _), (where, parts) in groups.items():
            inst = _instance(parts, int(h), int(w), where, scan)
            if inst is not None:
                shapes.append((label, inst))
        return entry, str(path), shapes


def _instance(parts, h, w, where, scan) -> Instance | None:
    """The parts of one object (polygons, mask RLEs) as one Instance, or None (nothing left)."""
    polygons = [v for kind, v in parts if kind == "poly"]
    rles = [v for kind, v in parts if kind == "rle"]
    if not rles:
        return scan.instance(0, polygons, h, w, where)
    from pycocotools import mask as mask_utils

    kept = [p for p in polygons if p is not None]
    if kept:
        rles.append(mask_utils.merge(mask_utils.frPyObjects([p.tolist() for p in kept], h, w)))
    rle = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    if int(mask_utils.area(rle)) == 0:
        scan.skip("zero-area object", f"{where}: object has zero area (empty mask)")
        return None
    return Instance(0, ("rle", {"size": list(rle["size"]), "counts": rle["counts"]}), where)


def open_splits(data_config, splits, labels=None, progress: bool = True) -> dict:
    """The ``train`` / ``val`` folders; val takes the training split's class names."""
    section = data_config.labelme
    names = section.class_names or (labels.class_names if labels is not None and labels.class_names else None)

    def read(folder, train):
        return LabelMeFolder(folder, names or (train.class_names if train else None), data_config.skip_bad, progress)

    return folder_splits(NAME, section, splits, read)


def eval_data(section: LabelMeSourceConfig, path: Path, images=None) -> bool:
    """``evaluate --data FOLDER``: a folder holding LabelMe JSON files."""
    if not path.is_dir() or not any(_looks_like_labelme(p) for p in list(path.rglob("*.json"))[:5]):
        return False
    return point_eval_at(section, "val", path, images, "a LabelMe folder")


def _looks_like_labelme(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()).get("shapes"), list)
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


register_source(NAME, section=LabelMeSourceConfig, open=open_splits, requires=("pycocotools", "PIL"),
                eval_data=eval_data)
