"""The CIS680 SOLO homework format (images/masks h5, labels/bboxes npy) as a record source.

Layout (docs/DESIGN.md, "The seed's own dataset")::

    images h5, key "data":  (N, 3, H, W) uint8, channels-first RGB (H, W = 300, 400)
    masks h5,  key "data":  (total, H, W) 0/1; image i owns the next len(labels[i]) masks
    labels npy: N int arrays, values 1 vehicle, 2 person, 3 animal (-> class 0, 1, 2)
    bboxes npy: N float arrays (n, 4), x1 y1 x2 y2 (checked, not used: boxes come from masks)

The npy files are numpy object arrays, which load only through pickle, and unpickling can
run arbitrary code: :class:`Cis680Dataset` loads them only with ``trust_pickle=True``
(``--trust-pickle`` / ``data.cis680.trust_pickle``) and otherwise raises a DataError saying why.
Plain (non-object) arrays, e.g. a (N, k) int array, load either way.

Bad input raises :class:`~solo_tf.data.errors.DataError` naming the file and the image;
``skip_bad=True`` skips and counts per-image problems instead (an empty mask drops that
object; a label out of range or bboxes that do not match the labels drop the image).
Problems with a file as a whole (missing, unreadable, no ``data`` key, wrong rank, mask and
image sizes differing, mask count not the label total) always raise: the records cannot be
lined up without them.

As a data source: ``data.source: cis680``, files in ``data.cis680``
(:class:`CIS680SourceConfig`); ``train`` / ``val`` (alias ``test``) are a seeded draw of
``val_fraction`` of the images, from one scan of the files.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solo_tf.data.errors import BadRecordLog, DataError, Progress
from solo_tf.data.registry import SPLITS, Split, register_source

NAME = "cis680"
CLASS_NAMES = ("vehicle", "person", "animal")
# The label values (1 vehicle, 2 person, 3 animal) are the category ids, as `solo-tf convert`
# writes them into COCO JSON.
CATEGORY_IDS = (1, 2, 3)
_SCAN_CHUNK = 128  # masks read per h5 slice while scanning

PICKLE_REFUSED = (
    "holds a numpy object array, which numpy can only load through pickle; unpickling a file "
    "can run arbitrary code, so it is refused by default. Pass --trust-pickle (data.cis680.trust_pickle: "
    "true; trust_pickle=True) only for files you trust, or convert them once with "
    "`solo-tf convert` on a trusted machine."
)


def load_npy(path, trust_pickle: bool, what: str) -> np.ndarray:
    """``np.load`` of one array with every failure turned into a DataError naming ``path``."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=bool(trust_pickle))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path}: {what} {PICKLE_REFUSED}") from None
        raise DataError(f"{path}: not a valid .npy {what} file: {e}") from None
    except Exception as e:  # corrupt header / payload; with pickle, whatever unpickling raises
        raise DataError(f"{path}: not a valid .npy {what} file: {type(e).__name__}: {e}") from None
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise DataError(f"{path}: expected one .npy array of {what}, got {type(arr).__name__}")
    return arr


def _per_image(arr, path, what, n_images=None):
    """(N,) object array or (N, ...) plain array -> list of N arrays (one per image)."""
    if arr.ndim == 0:
        raise DataError(f"{path}: {what} must be one entry per image, got a scalar")
    items = list(arr)
    if n_images is not None and len(items) != n_images:
        raise DataError(f"{path}: has {len(items)} {what} entries but the images file has {n_images} images")
    return items


class Cis680Dataset:
    """The CIS680 files, validated; ``load(i)`` reads image ``i`` (its index in the h5).

    Args:
        images_h5, masks_h5, labels_npy: the three required files.
        bboxes_npy: optional; checked (one (n, 4) finite array per image) when given.
        trust_pickle: allow object-array npy files to be unpickled (see module docstring).
        skip_bad: skip and count bad images / objects in :attr:`bad` instead of raising.
        progress: progress lines on stderr while scanning the masks.

    ``load(i)``: ``image`` (H, W, 3) uint8, ``masks`` (n, H, W) uint8 0/1, ``classes`` (n,)
    int32 in 0..2, ``image_id`` int64 = i + 1 (the id :func:`convert_cis680_to_coco` gives).
    """

    def __init__(self, images_h5, masks_h5, labels_npy, bboxes_npy=None, trust_pickle: bool = False,
                 skip_bad: bool = False, progress: bool = True):
        self.images_h5, self.masks_h5 = Path(images_h5), Path(masks_h5)
        self.labels_npy = Path(labels_npy)
        self.bboxes_npy = Path(bboxes_npy) if bboxes_npy is not None else None
        self.skip_bad = bool(skip_bad)
        self.progress = bool(progress)
        self.bad = BadRecordLog(str(self.labels_npy.parent / "cis680"))
        self._lock = threading.Lock()
        self._files = {}
        self._pid = os.getpid()

        images = self._dataset(self.images_h5, "images")
        masks = self._dataset(self.masks_h5, "masks")
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"{self.images_h5}: 'data' must be (N, 3, H, W) channels-first RGB, got {images.shape}")
        if images.dtype != np.uint8:
            raise DataError(f"{self.images_h5}: 'data' must be uint8 RGB, got {images.dtype}")
        if masks.ndim != 3:
            raise DataError(f"{self.masks_h5}: 'data' must be (num_masks, H, W), got {masks.shape}")
        if not (np.issubdtype(masks.dtype, np.number) or masks.dtype == np.bool_):
            raise DataError(f"{self.masks_h5}: 'data' must be numeric 0/1 masks, got {masks.dtype}")
        self.num_images = int(images.shape[0])
        self.image_size = (int(images.shape[2]), int(images.shape[3]))
        if tuple(masks.shape[1:]) != self.image_size:
            raise DataError(
                f"{self.masks_h5}: masks are {masks.shape[1]}x{masks.shape[2]} (HxW) but the images in "
                f"{self.images_h5.name} are {self.image_size[0]}x{self.image_size[1]}: mask/image shape mismatch"
            )

        labels = _per_image(load_npy(self.labels_npy, trust_pickle, "labels"), self.labels_npy, "labels",
                            self.num_images)
        self._labels = [self._label_array(lab, i) for i, lab in enumerate(labels)]
        counts = np.array([len(lab) for lab in self._labels], np.int64)
        total = int(counts.sum())
        if total != masks.shape[0]:
            raise DataError(
                f"{self.masks_h5}: holds {masks.shape[0]} masks but {self.labels_npy.name} lists {total} labels; "
                "image i owns the next len(labels[i]) masks, so the two must agree"
            )
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._keep = [np.ones(len(lab), bool) for lab in self._labels]  # objects kept per image
        self._bad_images: set[int] = set()

        for i, lab in enumerate(self._labels):
            out = (lab < 1) | (lab > len(CLASS_NAMES))
            if out.any():
                self._bad_image(i, "label out of range",
                                f"{self.labels_npy}: image {i}: label {int(lab[out][0])} out of range "
                                f"(1 vehicle, 2 person, 3 animal)")
        if self.bboxes_npy is not None:
            boxes = _per_image(load_npy(self.bboxes_npy, trust_pickle, "bboxes"), self.bboxes_npy, "bboxes",
                               self.num_images)
            for i, b in enumerate(boxes):
                self._check_boxes(i, b)
        self._scan_masks(masks)
        self.indices = [i for i in range(self.num_images) if i not in self._bad_images]
        if self.bad.total and self.progress:
            import sys

            print(self.bad.summary(), file=sys.stderr)

    # --- files ------------------------------------------------------------------------------
    def _file(self, path):
        """An open h5py file, one per process (h5py serialises access across threads itself)."""
        import h5py

        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's handles are not ours to share
                self._files, self._pid = {}, os.getpid()
            f = self._files.get(path)
            if f is None:
                try:
                    f = h5py.File(path, "r")
                except FileNotFoundError:
                    raise DataError(f"{path}: file not found") from None
                except OSError as e:
                    raise DataError(f"{path}: not a readable HDF5 file: {e}") from None
                self._files[path] = f
            return f

    def _dataset(self, path, what):
        f = self._file(path)
        if "data" not in f:
            raise DataError(f"{path}: no 'data' dataset (keys: {', '.join(list(f.keys())[:10]) or 'none'}); "
                            f"expected the {what} under key 'data'")
        d = f["data"]
        if not hasattr(d, "shape") or not hasattr(d, "dtype"):
            raise DataError(f"{path}: 'data' is a group, expected the {what} array")
        return d

    def close(self):
        with self._lock:
            for f in self._files.values():
                try:
                    f.close()
                except Exception:  # already closed / interpreter shutting down
                    pass
            self._files = {}

    def __del__(self):
        self.close()

    # --- validation -------------------------------------------------------------------------
    def _label_array(self, lab, i):
        try:
            a = np.asarray(lab)
            if a.ndim == 0:
                a = a.reshape(1)
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
                raise ValueError(f"shape {a.shape}, dtype {a.dtype}")
            if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a) & (a == np.round(a))):
                raise ValueError("non-integer values")
            return a.astype(np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            # Without a count for this image the masks of every later image cannot be found.
            raise DataError(f"{self.labels_npy}: image {i}: labels must be a 1-D integer array ({e})") from None

    def _check_boxes(self, i, b):
        n = len(self._labels[i])
        try:
            a = np.asarray(b, dtype=np.float64)
            ok = a.shape == (n, 4) or (n == 0 and a.size == 0)
            ok = ok and bool(np.all(np.isfinite(a)))
        except (TypeError, ValueError, OverflowError):
            ok, a = False, None
        if not ok:
            shape = getattr(a, "shape", "?")
            self._bad_image(i, "bboxes do not match labels",
                            f"{self.bboxes_npy}: image {i}: bboxes must be ({n}, 4) finite numbers, got shape {shape}")

    def _bad_image(self, i, reason, message):
        self.bad.handle(self.skip_bad, reason, message)
        self._bad_images.add(i)

    def _scan_masks(self, masks):
        total = masks.shape[0]
        owner = np.repeat(np.arange(self.num_images), [len(lab) for lab in self._labels])
        with Progress(total, f"scanning {self.masks_h5.name}", enabled=self.progress) as bar:
            for s in range(0, total, _SCAN_CHUNK):
                try:
                    chunk = np.asarray(masks[s:s + _SCAN_CHUNK])
                except Exception as e:  # h5py read errors (corrupt chunks) come as OSError and others
                    raise DataError(f"{self.masks_h5}: cannot read masks {s}..{s + _SCAN_CHUNK - 1}: {e}") from None
                areas = self._binary(chunk).reshape(len(chunk), -1).sum(1)
                for k in np.nonzero(areas == 0)[0]:
                    j = s + int(k)
                    i = int(owner[j])
                    if i in self._bad_images:
                        continue
                    self.bad.handle(self.skip_bad, "empty mask",
                                    f"{self.masks_h5}: mask {j} (image {i}, object {j - self._starts[i]}) is empty")
                    self._keep[i][j - self._starts[i]] = False
                bar.update(len(chunk))

    @staticmethod
    def _binary(m):
        if m.dtype == np.bool_:
            return m.astype(np.uint8)
        if np.issubdtype(m.dtype, np.floating):
            return (np.nan_to_num(m) >= 0.5).astype(np.uint8)
        return (m != 0).astype(np.uint8)

    # --- public -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    @property
    def class_names(self) -> tuple:
        return CLASS_NAMES

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
        """Seeded random split of the h5 indices into (train, val), each sorted.

        The permutation is over all N images, then bad ones are removed, so skipping an
        image never moves another across the split.
        """
        if not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        perm = np.random.default_rng(int(seed)).permutation(self.num_images)
        n_val = int(round(self.num_images * float(val_fraction)))
        good = set(self.indices)
        val = sorted(int(i) for i in perm[:n_val] if i in good)
        train = sorted(int(i) for i in perm[n_val:] if i in good)
        return train, val

    def load(self, i: int) -> dict:
        """Image ``i`` (its index in the h5 file) with its kept objects; raises DataError."""
        i = int(i)
        if not 0 <= i < self.num_images:
            raise DataError(f"{self.images_h5}: image index {i} out of range 0..{self.num_images - 1}")
        if i in self._bad_images:
            raise DataError(f"{self.images_h5}: image {i} was found bad while scanning (see the summary)")
        try:
            image = np.asarray(self._file(self.images_h5)["data"][i])
            start, n = int(self._starts[i]), len(self._labels[i])
            masks = np.asarray(self._file(self.masks_h5)["data"][start:start + n]) if n else None
        except DataError:
            raise
        except Exception as e:  # h5py read failures (corrupt chunk, file changed underneath)
            raise DataError(f"{self.images_h5} / {self.masks_h5}: cannot read image {i}: {e}") from None
        h, w = self.image_size
        keep = self._keep[i]
        masks = self._binary(masks[keep]) if n else np.zeros((0, h, w), np.uint8)
        return {
            "image": np.ascontiguousarray(np.transpose(image, (1, 2, 0))),
            "masks": np.ascontiguousarray(masks),
            "classes": (self._labels[i][keep] - 1).astype(np.int32),
            "image_id": np.int64(i + 1),
        }


def cis680_dataset(data_config, progress: bool = True) -> Cis680Dataset:
    """The validated :class:`Cis680Dataset` of a DataConfig's ``data.cis680`` files (scanned now)."""
    c = data_config.cis680
    paths = (c.images, c.masks, c.labels)
    missing = [k for k, p in zip(("images", "masks", "labels"), paths) if not p]
    if missing:
        raise DataError(f"data.source is 'cis680' but data.cis680.{missing[0]} is not set")
    return Cis680Dataset(*paths, bboxes_npy=c.bboxes, trust_pickle=c.trust_pickle,
                         skip_bad=data_config.skip_bad, progress=progress)


# --- the data source ----------------------------------------------------------------------------
@dataclass
class CIS680SourceConfig:
    """``data.source: cis680``: the homework's h5/npy files, split train/val by a seeded draw."""

    images: str | None = None
    masks: str | None = None
    labels: str | None = None
    bboxes: str | None = None
    trust_pickle: bool = False  # the npy files are pickled object arrays: only for files you trust
    val_fraction: float = 0.2

    def validate(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.cis680.val_fraction must be in (0, 1), got {self.val_fraction}")


def open_splits(data_config, splits=SPLITS, labels=None, progress: bool = True) -> dict:
    """The seeded ``train`` / ``val`` (alias ``test``) splits of the CIS680 files, from one scan.

    The split is ``data_config.cis680.val_fraction`` (0.2: the homework's 80/20) of the
    images, drawn with ``data_config.seed``. Training records come in a freshly shuffled
    order each epoch. Both splits share one reader and one bad-record log.
    """
    for split in splits:
        if split not in SPLITS + ("test",):
            raise DataError(f"cis680: split must be one of train, val, test; got {split!r}")
    ds = cis680_dataset(data_config, progress=progress)
    train, val = ds.split(data_config.cis680.val_fraction, data_config.seed)
    return {split: Split(ds, CLASS_NAMES, CATEGORY_IDS, ds.bad, indices=train if split == "train" else val,
                         shuffle=split == "train", image_size=ds.image_size, origin="the cis680 source")
            for split in splits}


register_source(NAME, section=CIS680SourceConfig, open=open_splits, requires=("h5py", "pycocotools"))
