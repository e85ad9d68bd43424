"""COCO instances JSON + an image folder as a record source.

:class:`CocoDataset` reads and validates the whole annotation file up front (with a
progress line on stderr); images are decoded and masks rasterised per image, in parallel,
when the ``tf.data`` records are iterated. What it accepts:

* ``segmentation`` as polygons (a list of ``[x1, y1, x2, y2, ...]``) or RLE, compressed
  (``counts`` a string) or uncompressed (``counts`` a list), rasterised with pycocotools
  exactly as ``COCO.annToMask``.
* ``iscrowd: 1`` objects are excluded from the targets (counted in :attr:`CocoDataset.stats`).
* Category ids map to contiguous 0-based class indices in increasing id order;
  :attr:`CocoDataset.category_map` (index -> ``{"id", "name"}``) is saved with a model so its
  predictions come back with the user's ids and names, and can be passed back in
  (``category_map=``) to read another file with the same mapping.
* Images without annotations are kept (negatives).

Bad input (:class:`~solo_tf.data.errors.DataError` naming the file and the record, or with
``skip_bad=True`` skipped and counted in :attr:`CocoDataset.bad`). What is skipped is the
smallest unit that keeps the targets honest:

* the polygon part: a polygon with fewer than 3 points (it has no area);
* the annotation: an annotation whose image id is not in ``images``; an object whose mask
  is empty (zero area);
* the whole image: anything that leaves a visible object unlabelled or the image unusable —
  a category id not in the categories, an RLE whose size is not the image's, a malformed
  segmentation / RLE / ``iscrowd``, a malformed image entry, a missing or corrupt image
  file, an image file whose size is not the one the JSON gives.

Problems with the file as a whole (not found, truncated or invalid JSON, no ``images`` /
``annotations`` / ``categories`` list, malformed or duplicate categories) always raise.

As a data source: ``data.source: coco``, files in ``data.coco`` (:class:`CocoSourceConfig`).
The validation split takes the training split's category map (or a trained model's,
``labels.category_ids``), so one category id is one class index in both.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solo_tf.data.errors import BadRecordLog, DataError, Progress
from solo_tf.data.registry import Split, register_source

NAME = "coco"

# Largest image the reader accepts (pixels): a bigger height * width in the JSON is a
# corrupt entry, not a photo, and rasterising masks for it would exhaust memory.
MAX_PIXELS = 1 << 28
MAX_SIDE = 1 << 16


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def rle_string_counts(s: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string, or None if the string is malformed.

    Mirrors pycocotools' ``rleFrString`` (LEB128-like 5-bit groups offset by 48, counts
    after the second stored as the difference to the count two before) but refuses what
    the C code would read out of bounds or wrap: characters outside ``'0'..'o'``, a group
    continuing past the end, more than 7 groups per count, or a count outside [0, 2**32).
    """
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n or k >= 7:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if not 0 <= x < (1 << 32):
            return None
        counts.append(x)
    return counts


class CocoDataset:
    """A validated COCO instances file: per image, its file and its objects.

    Args:
        annotation_file: instances JSON (``images``, ``annotations``, ``categories``).
        image_dir: folder the images' ``file_name`` are relative to.
        skip_bad: skip and count bad records (:attr:`bad`) instead of raising
            :class:`DataError`.
        category_map: ``{index: {"id": id, "name": name}}`` (keys may be strings, as
            read back from JSON) to use instead of the file's categories; annotations
            with an id outside it are bad.
        check_images: open every image file's header up front (exists, readable, size
            equal to the JSON's); decoding checks again either way.
        progress: print progress lines on stderr while scanning.

    ``load(i)`` returns image ``i`` as numpy arrays: ``image`` (h, w, 3) uint8 RGB,
    ``masks`` (n, h, w) uint8 0/1, ``classes`` (n,) int32, ``image_id`` int64.
    """

    def __init__(
        self,
        annotation_file,
        image_dir,
        skip_bad: bool = False,
        category_map: dict | None = None,
        check_images: bool = True,
        progress: bool = True,
    ):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.skip_bad = bool(skip_bad)
        self.progress = bool(progress)
        self.name = self.annotation_file.name
        self.bad = BadRecordLog(str(self.annotation_file))
        self.stats = {"images": 0, "negatives": 0, "objects": 0, "crowd": 0, "images_skipped": 0}
        data = self._read_json()
        images, annotations, categories = self._top_level(data)
        self._set_categories(categories, category_map)
        self._set_images(images)
        self._set_annotations(annotations)
        if check_images:
            self._check_image_files()
        self._finish()

    # --- reading and validation -------------------------------------------------------------
    def _fail(self, what: str):
        raise DataError(f"{self.annotation_file}: {what}")

    def _read_json(self):
        try:
            with open(self.annotation_file, "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            self._fail("annotation file not found")
        except IsADirectoryError:
            self._fail("is a directory, expected an instances JSON file")
        except json.JSONDecodeError as e:
            self._fail(f"not valid JSON (truncated or corrupt?): {e.msg} at line {e.lineno} column {e.colno}")
        except UnicodeDecodeError as e:
            self._fail(f"not valid JSON text: {e}")
        except RecursionError:
            self._fail("not valid instances JSON: nested too deeply")
        except OSError as e:
            self._fail(f"cannot read: {e}")

    def _top_level(self, data):
        if not isinstance(data, dict):
            self._fail(f"top level must be an object with images/annotations/categories, got {type(data).__name__}")
        out = []
        for key in ("images", "annotations", "categories"):
            if key not in data:
                self._fail(f"no '{key}' list (is this a COCO instances file?)")
            if not isinstance(data[key], list):
                self._fail(f"'{key}' must be a list, got {type(data[key]).__name__}")
            out.append(data[key])
        return out

    def _set_categories(self, categories, category_map):
        if category_map is not None:
            self._category_map = self._checked_category_map(category_map, categories)
        else:
            by_id = {}
            for k, c in enumerate(categories):
                if not isinstance(c, dict) or not _is_int(c.get("id")):
                    self._fail(f"category #{k}: needs an integer 'id', got {c!r:.80}")
                name = c.get("name", str(c["id"]))
                if not isinstance(name, str):
                    self._fail(f"category id {c['id']}: 'name' must be a string, got {name!r:.80}")
                if c["id"] in by_id:
                    self._fail(f"category id {c['id']} appears twice")
                by_id[int(c["id"])] = name
            if not by_id:
                self._fail("'categories' is empty: no classes to train")
            self._category_map = {i: {"id": cid, "name": by_id[cid]} for i, cid in enumerate(sorted(by_id))}
        self._index_of_id = {v["id"]: i for i, v in self._category_map.items()}

    def _checked_category_map(self, category_map, categories):
        """The given map, checked; an entry without a name takes the file's name for its id."""
        file_names = {c["id"]: c["name"] for c in categories
                      if isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)}
        if not isinstance(category_map, dict) or not category_map:
            raise DataError(f"category_map must be a non-empty dict index -> {{id, name}}, got {category_map!r:.80}")
        out = {}
        for key, v in category_map.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise DataError(f"category_map: key {key!r} is not a class index") from None
            if not isinstance(v, dict) or not _is_int(v.get("id")) or not isinstance(v.get("name", ""), str):
                raise DataError(f"category_map[{key!r}] must be {{'id': int, 'name': str}}, got {v!r:.80}")
            out[i] = {"id": int(v["id"]), "name": v.get("name", file_names.get(v["id"], str(v["id"])))}
        if sorted(out) != list(range(len(out))):
            raise DataError(f"category_map keys must be 0..{len(out) - 1}, got {sorted(out)}")
        if len({v["id"] for v in out.values()}) != len(out):
            raise DataError("category_map: a category id appears twice")
        return dict(sorted(out.items()))

    def _set_images(self, images):
        self._images = {}  # image id -> [file_name, height, width, objects]; objects: [(class, ann label, seg)]
        self._known_ids = set()  # every image id the file mentions, bad entries included
        self._bad_images: set = set()
        duplicates = set()
        for k, im in enumerate(images):
            iid = im.get("id") if isinstance(im, dict) else None
            where = f"image id {iid}" if _is_int(iid) else f"image #{k}"
            if _is_int(iid):
                if iid in self._known_ids:
                    duplicates.add(iid)
                self._known_ids.add(iid)
            problem = self._image_entry_problem(im)
            if problem:
                self._bad_image(iid if _is_int(iid) else None, "malformed image entry", f"{where}: {problem}")
                continue
            self._images.setdefault(iid, [im["file_name"], int(im["height"]), int(im["width"]), []])
        for iid in sorted(duplicates):
            self._bad_image(iid, "duplicate image id", f"image id {iid}: appears more than once in 'images'")

    @staticmethod
    def _image_entry_problem(im):
        if not isinstance(im, dict):
            return f"must be an object, got {type(im).__name__}"
        if not _is_int(im.get("id")):
            return f"needs an integer 'id', got {im.get('id')!r:.40}"
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            return f"needs a 'file_name' string, got {im.get('file_name')!r:.80}"
        h, w = im.get("height"), im.get("width")
        if not (_is_int(h) and _is_int(w) and 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE and h * w <= MAX_PIXELS):
            return f"height/width must be positive integers (at most {MAX_SIDE}), got {h!r:.20} x {w!r:.20}"
        return None

    def _bad_image(self, iid, reason, message):
        """An image that cannot be used: raise, or remember it (and its annotations) as skipped."""
        self.bad.handle(self.skip_bad, reason, f"{self.name}: {message}")
        if iid is not None:
            self._bad_images.add(iid)

    def _set_annotations(self, annotations):
        with Progress(len(annotations), f"scanning {self.name}", enabled=self.progress) as bar:
            for k, ann in enumerate(annotations):
                self._add_annotation(k, ann)
                bar.update()

    def _add_annotation(self, k, ann):
        if not isinstance(ann, dict):
            self.bad.handle(self.skip_bad, "malformed annotation",
                            f"{self.name}: annotation #{k}: must be an object, got {type(ann).__name__}")
            return
        aid, iid = ann.get("id"), ann.get("image_id")
        label = (f"annotation id {aid}" if _is_int(aid) else f"annotation #{k}") + f" (image {iid!r:.40})"
        where = f"{self.name}: {label}"
        if not _is_int(iid) or iid not in self._known_ids:
            self.bad.handle(self.skip_bad, "annotation points to a missing image",
                            f"{where}: image id {iid!r:.40} is not in 'images'")
            return
        if iid in self._bad_images:
            return  # its image is skipped already (and counted)
        entry = self._images[iid]
        h, w = entry[1], entry[2]
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            self._bad_image(iid, "malformed annotation", f"{where}: iscrowd must be 0 or 1, got {crowd!r:.40}")
            return
        if crowd == 1:
            self.stats["crowd"] += 1
            return
        cid = ann.get("category_id")
        if not _is_int(cid) or cid not in self._index_of_id:
            self._bad_image(iid, "category id not in categories",
                            f"{where}: category_id {cid!r:.40} is not one of the {len(self._index_of_id)} categories")
            return
        seg = self._checked_segmentation(ann.get("segmentation"), h, w, iid, where)
        if seg is None:
            return
        if self._area(seg, h, w) == 0:
            self.bad.handle(self.skip_bad, "zero-area object", f"{where}: object has zero area (empty mask)")
            return
        entry[3].append((self._index_of_id[cid], label, seg))

    def _checked_segmentation(self, seg, h, w, iid, where):
        """Validated segmentation as ("poly", [arrays]) / ("rle", bytes) / ("counts", list), or None."""
        if isinstance(seg, list):
            if not seg:
                self._bad_image(iid, "malformed segmentation", f"{where}: segmentation is an empty list")
                return None
            polys = []
            for j, poly in enumerate(seg):
                try:
                    xy = np.asarray(poly, dtype=np.float64)
                except (TypeError, ValueError, OverflowError):
                    xy = None
                if xy is None or xy.ndim != 1 or not all(_is_number(v) for v in poly):
                    self._bad_image(iid, "malformed segmentation",
                                    f"{where}: polygon {j} must be a flat list of numbers, got {poly!r:.60}")
                    return None
                if xy.size % 2:
                    self._bad_image(iid, "malformed segmentation",
                                    f"{where}: polygon {j} has an odd number of coordinates ({xy.size})")
                    return None
                if not np.all(np.isfinite(xy)):
                    self._bad_image(iid, "malformed segmentation", f"{where}: polygon {j} has non-finite coordinates")
                    return None
                x, y = xy[0::2], xy[1::2]
                # pycocotools clips moderate overshoot itself; far-off points are corrupt data
                # (and would overflow its integer arithmetic).
                if x.size and (x.min() < -w or x.max() > 2 * w or y.min() < -h or y.max() > 2 * h):
                    self._bad_image(iid, "malformed segmentation",
                                    f"{where}: polygon {j} has points far outside the {w}x{h} image")
                    return None
                if xy.size < 6:
                    self.bad.handle(self.skip_bad, "polygon with < 3 points",
                                    f"{where}: polygon {j} with {xy.size // 2} points (< 3)")
                    continue
                polys.append(xy)
            if not polys:
                return None  # every part was skipped (and counted): nothing of the object is left
            return ("poly", polys)
        if isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
                self._bad_image(iid, "malformed RLE", f"{where}: RLE 'size' must be [height, width], got {size!r:.40}")
                return None
            if list(size) != [h, w]:
                self._bad_image(iid, "RLE size is not the image size",
                                f"{where}: RLE size {list(size)} != image size [{h}, {w}]")
                return None
            if isinstance(counts, str):
                runs = rle_string_counts(counts)
                kind = ("rle", counts.encode("ascii")) if runs is not None else None
            elif isinstance(counts, list):
                runs = counts if all(_is_int(v) and 0 <= v < (1 << 32) for v in counts) else None
                kind = ("counts", [int(v) for v in counts]) if runs is not None else None
            else:
                runs, kind = None, None
            if runs is None:
                self._bad_image(iid, "malformed RLE", f"{where}: RLE 'counts' is not a valid run-length encoding")
                return None
            if sum(runs) != h * w:
                self._bad_image(iid, "RLE size is not the image size",
                                f"{where}: RLE runs cover {sum(runs)} pixels, the {w}x{h} image has {h * w}")
                return None
            return kind
        self._bad_image(iid, "malformed segmentation",
                        f"{where}: segmentation must be polygons or an RLE object, got {type(seg).__name__}")
        return None

    @staticmethod
    def _rle(seg, h, w):
        """pycocotools RLE object (dict, compressed counts) of a validated segmentation."""
        from pycocotools import mask as mask_utils

        kind, value = seg
        if kind == "poly":
            return mask_utils.merge(mask_utils.frPyObjects([p.tolist() for p in value], h, w))
        if kind == "counts":
            return mask_utils.frPyObjects({"size": [h, w], "counts": value}, h, w)
        return {"size": [h, w], "counts": value}

    @classmethod
    def _area(cls, seg, h, w) -> int:
        from pycocotools import mask as mask_utils

        if seg[0] == "counts":
            return sum(seg[1][1::2])
        return int(mask_utils.area(cls._rle(seg, h, w)))

    def _check_image_files(self):
        from PIL import Image

        ids = [iid for iid in self._images if iid not in self._bad_images]

        def check(iid):
            file_name, h, w, _ = self._images[iid]
            path = self.image_dir / file_name
            if not path.is_file():
                return iid, "missing image file", f"{path}: image file not found (image id {iid} in {self.name})"
            try:
                with Image.open(path) as im:
                    size = im.size
            except Exception as e:  # PIL raises many types for unreadable headers
                return iid, "corrupt image file", f"{path}: not a readable image (image id {iid}): {e}"
            if size != (w, h):
                return iid, "image size is not the annotated size", (
                    f"{path}: image is {size[0]}x{size[1]} but {self.name} says {w}x{h} (image id {iid})")
            return None

        with Progress(len(ids), f"checking images in {self.image_dir}", enabled=self.progress) as bar:
            with ThreadPoolExecutor(max_workers=8) as pool:
                for result in pool.map(check, ids):
                    bar.update()
                    if result is not None:
                        self._bad_image(*result)

    def _finish(self):
        self._order = sorted(iid for iid in self._images if iid not in self._bad_images)
        self.stats["images"] = len(self._order)
        self.stats["negatives"] = sum(1 for iid in self._order if not self._images[iid][3])
        self.stats["objects"] = sum(len(self._images[iid][3]) for iid in self._order)
        self.stats["images_skipped"] = len(self._bad_images)
        if self.bad.total and self.progress:
            import sys

            print(self.bad.summary(), file=sys.stderr)

    # --- public -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._order)

    @property
    def image_ids(self) -> list[int]:
        return list(self._order)

    @property
    def category_map(self) -> dict:
        """``{class index: {"id": category id, "name": name}}``, indices 0..C-1."""
        return {i: dict(v) for i, v in self._category_map.items()}

    @property
    def class_names(self) -> tuple:
        return tuple(v["name"] for v in self._category_map.values())

    @property
    def num_classes(self) -> int:
        return len(self._category_map)

    def load(self, index: int) -> dict:
        """Decode image ``index`` (0..len-1) and rasterise its masks; raises DataError."""
        from PIL import Image
        from pycocotools import mask as mask_utils

        iid = self._order[index]
        file_name, h, w, objects = self._images[iid]
        path = self.image_dir / file_name
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found (image id {iid} in {self.name})",
                            "missing image file") from None
        except Exception as e:  # truncated / corrupt content: PIL raises OSError, SyntaxError, ...
            raise DataError(f"{path}: cannot decode image (image id {iid}): {e}", "corrupt image file") from None
        if image.shape[:2] != (h, w):
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but {self.name} says {w}x{h} "
                            f"(image id {iid})", "image size is not the annotated size")
        if objects:
            rles = [self._rle(seg, h, w) for _, _, seg in objects]
            masks = np.ascontiguousarray(np.transpose(mask_utils.decode(rles), (2, 0, 1)), dtype=np.uint8)
        else:
            masks = np.zeros((0, h, w), np.uint8)
        classes = np.array([c for c, _, _ in objects], np.int32)
        return {"image": np.ascontiguousarray(image, dtype=np.uint8), "masks": masks, "classes": classes,
                "image_id": np.int64(iid)}


def coco_dataset(
    data_config, split: str, category_map: dict | None = None, progress: bool = True
) -> CocoDataset | None:
    """The :class:`CocoDataset` of ``split`` ("train" or "val") from a DataConfig, or None.

    ``category_map`` fixes the class index of each category id (pass the training split's
    to a validation split whose file lists its categories differently); without it the
    file's own categories are used. None when the split's annotation file is not set (val).
    """
    if split not in ("train", "val"):
        raise DataError(f"coco: split must be 'train' or 'val', got {split!r}")
    coco = data_config.coco
    ann = coco.train_annotations if split == "train" else coco.val_annotations
    images = coco.train_images if split == "train" else coco.val_images
    if ann is None:
        if split == "val":
            return None
        raise DataError("data.source is 'coco' but data.coco.train_annotations is not set")
    if images is None:
        images = str(Path(ann).parent)  # image files beside the JSON when no folder is given
    return CocoDataset(ann, images, skip_bad=data_config.skip_bad, category_map=category_map, progress=progress)


# --- the data source ----------------------------------------------------------------------------
@dataclass
class CocoSourceConfig:
    """``data.source: coco``: instances JSON files and their image folders (default: the
    JSON's folder)."""

    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None


def _labels_category_map(labels):
    """The category map a config's labels fix (a trained model's), or None."""
    if labels is None or not labels.category_ids:
        return None
    names = labels.class_names
    return {i: {"id": int(cid), **({"name": str(names[i])} if names else {})}  # no name: the file's
            for i, cid in enumerate(labels.category_ids)}


def open_splits(data_config, splits, labels=None, progress: bool = True) -> dict:
    """The COCO splits asked for; ``train`` is read first and the others get its category
    map (or the one ``labels`` fix, a trained model's). A split without an annotation file
    (val) is None. Training records come in a freshly shuffled order each epoch."""
    cmap = _labels_category_map(labels)
    out = {}
    for split in sorted(splits, key=lambda s: s != "train"):
        ds = coco_dataset(data_config, split, category_map=cmap, progress=progress)
        if ds is None:
            out[split] = None
            continue
        if split == "train":
            cmap = ds.category_map
        ids = tuple(v["id"] for v in ds.category_map.values())
        out[split] = Split(ds, ds.class_names, ids, ds.bad, shuffle=split == "train",
                           annotation_file=str(ds.annotation_file), origin=str(ds.annotation_file))
    return out


def eval_data(section: CocoSourceConfig, path: Path, images=None) -> bool:
    """``evaluate --data FILE.json``: FILE is the validation split, its images in ``images``
    (default: ``images/`` beside it, else its folder)."""
    if path.suffix.lower() != ".json":
        return False
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if images is None:
        images = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    section.val_annotations, section.val_images = str(path), str(images)
    return True


register_source(NAME, section=CocoSourceConfig, open=open_splits, requires=("pycocotools", "PIL"),
                eval_data=eval_data)
