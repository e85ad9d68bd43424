"""Folders of instance-label PNGs as a data source (``data.source: masks``, :class:`MasksSourceConfig`).

The Pascal VOC layout (``SegmentationObject`` + ``SegmentationClass``), which CVAT and
other tools export too. A split is a folder holding three sub-folders, matched by the
image's path without its suffix::

    train/images/a.jpg         the image (any format PIL reads; searched recursively)
    train/instances/a.png      one value per object: 0 background, 1, 2, ... the objects,
                               ignore_value (255) an ignore region
    train/classes/a.png        the class of each pixel: 0 background, k = class_names[k - 1],
                               ignore_value ignored (may be left out when there is one class)

The PNGs are single-channel: 8-bit grey, 16-bit grey (more than 254 objects) or palette
(its indices are the values, as VOC stores them); an RGB PNG is refused. An object's
class is the one class value under its pixels (ignore pixels aside): an object over two
class values or over background is a bad image, named. An object may have several
disconnected parts: it is one value. The ignore region is kept out of the targets, as
COCO's ``iscrowd`` objects are, and written to COCO as crowd. Category ids are the class
values (index + 1).

The PNGs are read when the image is (``load``); the scan only pairs the files and reads
the image headers. Bad input raises :class:`~solo_tf.data.errors.DataError` naming the file
and the object, or with ``skip_bad`` is counted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solo_tf.data import annotated
from solo_tf.data.annotated import IGNORE, AnnotatedImage, Instance
from solo_tf.data.errors import BadRecordLog, DataError, Progress
from solo_tf.data.registry import register_source

NAME = "masks"


@dataclass
class MasksSourceConfig:
    """``data.source: masks``: split folders of images/, instances/ and classes/ PNGs."""

    train: str | None = None
    val: str | None = None
    class_names: list[str] | None = None  # class value k (1, 2, ...) in the class PNGs is class_names[k - 1]
    ignore_value: int | None = 255  # instance / class value of ignore regions; null: none

    def validate(self) -> None:
        if self.class_names is not None and (not self.class_names
                                             or len(set(self.class_names)) != len(self.class_names)):
            raise ValueError(f"data.masks.class_names must be distinct names, got {self.class_names}")
        if self.ignore_value is not None and not 0 < self.ignore_value < 1 << 16:
            raise ValueError(f"data.masks.ignore_value must be in 1..65535 or null, got {self.ignore_value}")


def read_label_png(path: Path, what: str) -> np.ndarray:
    """A single-channel label PNG as (h, w) int64 values; a DataError naming it otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(f"{path}: {what} PNG must be single-channel (8/16-bit grey or palette), got mode "
                                f"{im.mode}", f"malformed {what} PNG")
            return np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} PNG not found", f"missing {what} PNG") from None
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: not a readable {what} PNG: {e}", f"malformed {what} PNG") from None


class MaskFolder(annotated.AnnotatedImages):
    """One split folder (see the module docstring).

    Args:
        folder: holds ``images/``, ``instances/`` and (unless one class) ``classes/``.
        class_names: the names of class values 1, 2, ...
        ignore_value: the value of ignore regions, or None.
        skip_bad: skip and count bad images in :attr:`bad` instead of raising.
    """

    def __init__(self, folder, class_names, ignore_value=255, skip_bad: bool = False, progress: bool = True):
        self.folder = Path(folder)
        self.ignore_value = ignore_value
        image_dir = self.folder / "images"
        if not image_dir.is_dir():
            raise DataError(f"{self.folder}: no images/ folder (expected images/, instances/ and classes/)")
        self.has_classes = (self.folder / "classes").is_dir()
        if not self.has_classes and len(class_names) != 1:
            raise DataError(f"{self.folder}: no classes/ folder, which {len(class_names)} classes need "
                            "(it may be left out only when there is one class)")
        files = sorted(f for f in image_dir.rglob("*") if f.suffix.lower() in annotated.IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{image_dir}: no images in it")
        bad = BadRecordLog(str(self.folder))
        scan = annotated.Scan(bad, skip_bad)
        entries = []
        with Progress(len(files), f"scanning {self.folder}", enabled=progress) as bar:
            for path in files:
                rel = path.relative_to(image_dir).with_suffix(".png")
                inst = self.folder / "instances" / rel
                try:
                    if not inst.is_file():
                        scan.bad_image("missing instance PNG", f"{inst}: instance PNG not found (image {path})")
                    h, w = annotated.image_size(path, str(inst), scan)
                    entries.append(AnnotatedImage(path, path.name, h, w, None, str(inst)))
                except annotated.SkipImage:
                    pass
                bar.update()
        if bad.total and progress:
            print(bad.summary(), file=sys.stderr)
        super().__init__(entries, class_names, bad, {"images_skipped": bad.total})

    def instances(self, i: int) -> list:
        """Image ``i``'s objects from its PNGs (RLE), the ignore region last; raises DataError."""
        from pycocotools import mask as mask_utils

        entry = self.images[i]
        inst_path = Path(entry.where)
        ids = read_label_png(inst_path, "instance")
        if ids.shape != (entry.height, entry.width):
            raise DataError(f"{inst_path}: instance PNG is {ids.shape[1]}x{ids.shape[0]} but its image is "
                            f"{entry.width}x{entry.height}", "instance PNG size is not the image size")
        ignore = self.ignore_value
        if self.has_classes:
            cls_path = self.folder / "classes" / inst_path.relative_to(self.folder / "instances")
            classes = read_label_png(cls_path, "class")
            if classes.shape != ids.shape:
                raise DataError(f"{cls_path}: class PNG is {classes.shape[1]}x{classes.shape[0]}, its instance PNG "
                                f"{ids.shape[1]}x{ids.shape[0]}", "class PNG size is not the image size")
        values = [v for v in np.unique(ids) if v != 0 and v != ignore]
        out = []
        for v in values:
            mask = ids == v
            where = f"{inst_path}: object {v}"
            if self.has_classes:
                under = np.unique(classes[mask])
                under = under[under != ignore] if ignore is not None else under
                if len(under) != 1 or not 1 <= under[0] <= len(self.class_names):
                    named = ", ".join(str(int(c)) for c in under) or "only ignore"
                    raise DataError(f"{where}: lies over class value(s) {named} in {cls_path.name}; needs one of "
                                    f"1..{len(self.class_names)}", "object without one class")
                c = int(under[0]) - 1
            else:
                c = 0
            out.append(Instance(c, ("rle", mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))), where))
        if ignore is not None and (ids == ignore).any():
            rle = mask_utils.encode(np.asfortranarray((ids == ignore).astype(np.uint8)))
            out.append(Instance(IGNORE, ("rle", rle), f"{inst_path}: ignore region"))
        return out


def open_splits(data_config, splits, labels=None, progress: bool = True) -> dict:
    """The ``train`` / ``val`` folders of ``data.masks`` (val None when not set)."""
    section = data_config.masks
    names = section.class_names or (labels.class_names if labels is not None else None)
    if not names:
        raise DataError("data.masks.class_names is not set: name the class values 1, 2, ... of the class PNGs")
    return annotated.folder_splits(NAME, section, splits, lambda folder, train: MaskFolder(
        folder, names, section.ignore_value, data_config.skip_bad, progress))


def eval_data(section: MasksSourceConfig, path: Path, images=None) -> bool:
    """``evaluate --data FOLDER``: a split folder holding images/ and instances/."""
    if not ((path / "images").is_dir() and (path / "instances").is_dir()):
        return False
    return annotated.point_eval_at(section, "val", path, images, "an instance-PNG folder")


register_source(NAME, section=MasksSourceConfig, open=open_splits, requires=("pycocotools", "PIL"),
                eval_data=eval_data)
