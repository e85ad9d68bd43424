"""Image files with polygon or mask instances: what the LabelMe, YOLO-seg and instance-PNG
sources share, for training (records) and for ``solo-tf convert`` (COCO entries).

A format module scans its files into :class:`AnnotatedImage` entries (file, size, and the
:class:`Instance` list, or None when the instances are read with the image) and hands them
to :class:`AnnotatedImages`, the numpy reader: ``load(i)`` decodes image ``i`` and rasterises
its instances with pycocotools as COCO's ``annToMask`` does; ``coco_image(i)`` gives the same
image as COCO ``images`` / ``annotations`` entries (polygons stay polygons).

An instance of class :data:`IGNORE` is an ignore region (LabelMe ``__ignore__``, the void
value of an instance PNG): kept out of the training targets, as COCO's ``iscrowd`` objects
are, and written to COCO as ``iscrowd: 1`` (the records carry no crowd, so only evaluation
on the converted COCO files scores them as crowd).

Bad input follows the COCO reader's rules (:mod:`solo_tf.data.coco`): a polygon with fewer
than 3 points is skipped (that part; the object if nothing is left), and so is an object of
zero area; anything that would leave an object unlabelled or the image unusable (a
malformed polygon, an unknown class, a missing or unreadable image, a size that is not the
annotated one) skips the whole image. Each raises a
:class:`~solo_tf.data.errors.DataError` naming the file and the shape, or with ``skip_bad``
is counted in the reader's :class:`~solo_tf.data.errors.BadRecordLog`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from solo_tf.data.errors import BadRecordLog, DataError
from solo_tf.data.registry import SPLITS, Split

IGNORE = -1  # the class index of an ignore region
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class Instance(NamedTuple):
    """One object: ``class_index`` (:data:`IGNORE` for an ignore region), ``segmentation``
    (``("poly", [flat x0 y0 x1 y1 ... float64 arrays in pixels])`` or ``("rle", compressed
    pycocotools RLE dict)``) and ``label``, where it is in its file, for messages."""

    class_index: int
    segmentation: tuple
    label: str


class AnnotatedImage(NamedTuple):
    """One image: ``file`` its image file (or the file holding it, read by ``read``),
    ``name`` its file name for COCO, ``height`` x ``width`` as annotated, ``instances`` (None:
    :meth:`AnnotatedImages.instances` reads them with the image), ``where`` the annotation
    file for messages and ``read`` a function returning the image file's bytes (default:
    read ``file``)."""

    file: Path
    name: str
    height: int
    width: int
    instances: list | None
    where: str
    read: Callable | None = None


class SkipImage(Exception):
    """Raised by :meth:`Scan.bad_image` under ``skip_bad``: the image is dropped (and counted)."""


class Scan:
    """The bad-record rules while a format module scans its files into instances.

    Args:
        log: where skipped records are counted.
        skip_bad: count and skip instead of raising.
    """

    def __init__(self, log: BadRecordLog, skip_bad: bool):
        self.log, self.skip_bad = log, bool(skip_bad)

    def bad_image(self, reason: str, message: str):
        """The image cannot be used: raise DataError, or (``skip_bad``) count it and raise SkipImage."""
        self.log.handle(self.skip_bad, reason, message)
        raise SkipImage(message)

    def skip(self, reason: str, message: str) -> None:
        """A part or an object is dropped: raise DataError, or (``skip_bad``) count it."""
        self.log.handle(self.skip_bad, reason, message)

    def polygon(self, xy, height: int, width: int, where: str, normalized: bool = False):
        """``xy`` (a flat list of x, y numbers) as a float64 array in pixels, or None when it
        has fewer than 3 points (skipped and counted); a malformed polygon is a bad image.
        ``normalized``: coordinates are fractions of the width / height (YOLO)."""
        try:
            a = np.asarray(xy, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            a = None
        if a is None or a.ndim != 1:
            self.bad_image("malformed polygon", f"{where}: polygon must be x, y numbers, got {str(xy)[:60]}")
        if a.size % 2:
            self.bad_image("malformed polygon", f"{where}: polygon has an odd number of coordinates ({a.size})")
        if not np.all(np.isfinite(a)):
            self.bad_image("malformed polygon", f"{where}: polygon has non-finite coordinates")
        if normalized:
            if a.size and (a.min() < -1e-3 or a.max() > 1 + 1e-3):
                self.bad_image("malformed polygon", f"{where}: normalized coordinates outside [0, 1] "
                                                    f"({a.min():.3g} .. {a.max():.3g})")
            a = a * np.tile([width, height], a.size // 2)
        x, y = a[0::2], a[1::2]
        # pycocotools clips moderate overshoot itself; far-off points are corrupt data
        if x.size and (x.min() < -width or x.max() > 2 * width or y.min() < -height or y.max() > 2 * height):
            self.bad_image("malformed polygon", f"{where}: polygon has points far outside the {width}x{height} image")
        if a.size < 6:
            self.skip("polygon with < 3 points", f"{where}: polygon with {a.size // 2} points (< 3)")
            return None
        return a

    def instance(self, class_index: int, polygons: list, height: int, width: int, where: str) -> Instance | None:
        """An :class:`Instance` of the polygons that are left, or None when none is or its
        area is zero (skipped and counted)."""
        polygons = [p for p in polygons if p is not None]
        if not polygons:
            return None
        inst = Instance(int(class_index), ("poly", polygons), where)
        if int(rle_of(inst.segmentation, height, width)["area"]) == 0:
            self.skip("zero-area object", f"{where}: object has zero area (empty mask)")
            return None
        return inst


def rle_of(segmentation, height: int, width: int) -> dict:
    """The compressed pycocotools RLE of a segmentation, with its ``area``."""
    from pycocotools import mask as mask_utils

    kind, value = segmentation
    if kind == "poly":
        rle = mask_utils.merge(mask_utils.frPyObjects([p.tolist() for p in value], height, width))
    else:
        rle = dict(value)
    rle["area"] = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"]}))
    return rle


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Image file bytes as (h, w, 3) uint8 RGB; a DataError naming ``where`` if they are not one."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # truncated / corrupt content: PIL raises OSError, SyntaxError, ...
        raise DataError(f"{where}: cannot decode image: {e}", "corrupt image file") from None


def image_size(path: Path, where: str, scan: Scan) -> tuple[int, int]:
    """(height, width) from an image file's header; a missing or unreadable file is a bad image."""
    from PIL import Image

    if not path.is_file():
        scan.bad_image("missing image file", f"{path}: image file not found ({where})")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # PIL raises many types for unreadable headers
        scan.bad_image("corrupt image file", f"{path}: not a readable image ({where}): {e}")
    return int(h), int(w)


class AnnotatedImages:
    """The numpy reader of a list of :class:`AnnotatedImage` (image ids 1, 2, ...).

    Args:
        images: the scanned images.
        class_names: one per class index.
        bad: the scan's log; decode errors met by ``load`` go through the tf.data wrapper,
            which counts them here under ``skip_bad``.
        stats: what the scan counted (``objects``, ``ignore_regions``, ...), for reports.
    """

    def __init__(self, images: list, class_names, bad: BadRecordLog, stats: dict | None = None):
        self.images = list(images)
        self.class_names = tuple(class_names)
        self.bad = bad
        self.stats = dict(stats or {})

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, i: int) -> int:
        return int(i) + 1

    def read_bytes(self, i: int) -> bytes:
        entry = self.images[i]
        try:
            return entry.read() if entry.read is not None else entry.file.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{entry.file}: image file not found ({entry.where})", "missing image file") from None
        except OSError as e:
            raise DataError(f"{entry.file}: cannot read image ({entry.where}): {e}", "corrupt image file") from None

    def instances(self, i: int) -> list:
        """Image ``i``'s instances (ignore regions included)."""
        return self.images[i].instances

    def load(self, i: int) -> dict:
        """Image ``i`` as a record; ignore regions are left out of it. Raises DataError."""
        i = int(i)
        entry = self.images[i]
        image = decode_image(self.read_bytes(i), f"{entry.file} ({entry.where})")
        h, w = entry.height, entry.width
        if image.shape[:2] != (h, w):
            raise DataError(f"{entry.file}: image is {image.shape[1]}x{image.shape[0]} but {entry.where} says "
                            f"{w}x{h}", "image size is not the annotated size")
        objects = [inst for inst in self.instances(i) if inst.class_index != IGNORE]
        if objects:
            from pycocotools import mask as mask_utils

            rles = [rle_of(inst.segmentation, h, w) for inst in objects]
            masks = np.transpose(mask_utils.decode([{"size": r["size"], "counts": r["counts"]} for r in rles]),
                                 (2, 0, 1))
        else:
            masks = np.zeros((0, h, w), np.uint8)
        return {"image": image, "masks": np.ascontiguousarray(masks, np.uint8),
                "classes": np.array([inst.class_index for inst in objects], np.int32),
                "image_id": np.int64(self.image_id(i))}

    def coco_image(self, i: int) -> tuple[dict, list]:
        """Image ``i`` as a COCO ``images`` entry (``file_name`` unique in the split) and its
        instances (:class:`Instance`, ignore regions included)."""
        entry = self.images[i]
        iid = self.image_id(i)
        return ({"id": iid, "file_name": f"{iid:06d}_{entry.name}", "height": entry.height, "width": entry.width},
                self.instances(i))


def folder_splits(source: str, section, splits, make_reader: Callable) -> dict:
    """The splits of a section whose ``train`` / ``val`` fields are folders (or files):
    ``make_reader(path, train_reader)`` reads one, given the training split's reader (or
    None) so a validation split can number its classes the same way. Train is opened
    first; an unset ``val`` is None, an unset ``train`` an error. Category ids are the
    class index + 1."""
    out, train = {}, None
    for split in sorted(splits, key=lambda s: s != "train"):
        if split not in SPLITS:
            raise DataError(f"{source}: split must be one of {', '.join(SPLITS)}; got {split!r}")
        path = getattr(section, split)
        if path is None:
            if split == "train":
                raise DataError(f"data.source is {source!r} but data.{source}.train is not set")
            out[split] = None
            continue
        reader = make_reader(path, train)
        train = train or reader
        names = reader.class_names
        out[split] = Split(reader, names, tuple(range(1, len(names) + 1)), reader.bad, shuffle=split == "train",
                           origin=str(path))
    return out


def point_eval_at(section, field: str, path: Path, images, what: str) -> bool:
    """An ``eval_data`` hook's yes: set ``section.<field>`` to ``path``; ``--images`` (for
    COCO JSON) does not apply to ``what``."""
    if images is not None:
        raise ValueError(f"--images does not apply to {what}: it names its own images")
    setattr(section, field, str(path))
    return True
