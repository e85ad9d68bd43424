"""Data sources: each dataset format as unbatched records plus what they describe.

Record contract (what a source yields, unbatched; n and h, w vary per record)::

    image     (h, w, 3) uint8 RGB
    masks     (n, h, w) uint8 0/1, one per instance
    classes   (n,) int32, 0-based class index
    image_id  () int64

A :class:`RecordSource` is one split of one source: its records, its class names, the
dataset's own id of each class (COCO category ids), how many records it has and the
:class:`~solo_tf.data.errors.BadRecordLog` of what reading it skipped. :func:`open_sources`
opens the splits of ``config.data.source`` together, so what the splits share is read
once and handed over explicitly: COCO's validation split gets the training split's
category map, CIS680's two splits share one scan of the files. Nothing is cached between
calls.

This module is the leaf of the data package: it imports the format readers
(:mod:`~solo_tf.data.shapes`, :mod:`~solo_tf.data.coco`, :mod:`~solo_tf.data.cis680`) and
nothing from :mod:`~solo_tf.data.pipeline`, which turns records into model batches.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import tensorflow as tf

from solo_tf.data.cis680 import CLASS_NAMES as CIS680_CLASS_NAMES
from solo_tf.data.cis680 import cis680_dataset
from solo_tf.data.coco import coco_dataset
from solo_tf.data.errors import BadRecordLog, DataError
from solo_tf.data.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from solo_tf.data.shapes import ShapesGenerator

# Validation images are drawn from generator indices far above any training index, so the
# two splits never share an image whatever num_train is.
SHAPES_VAL_INDEX_OFFSET = 1 << 40
# The CIS680 label values (1 vehicle, 2 person, 3 animal) are its category ids, as
# `solo-tf convert` writes them into COCO JSON.
CIS680_CATEGORY_IDS = (1, 2, 3)
SPLITS = ("train", "val")


class RecordSource(NamedTuple):
    """One split of a data source.

    ``records``: unbatched ``tf.data`` records (the module's record contract);
    ``class_names``: one per class index; ``num_records``: records per epoch;
    ``category_ids``: the dataset's own id of each class index (COCO category ids), or None
    when the index is the id; ``bad_records``: the log of records skipped while reading
    (``data.skip_bad``; it keeps counting while ``records`` is iterated), or None for a
    source that cannot have bad records.
    """

    records: tf.data.Dataset
    class_names: tuple
    num_records: int
    category_ids: tuple | None = None
    bad_records: BadRecordLog | None = None

    @property
    def category_map(self) -> dict:
        """``{class index: {"id": id, "name": name}}`` (ids default to the index)."""
        ids = self.category_ids or range(len(self.class_names))
        return {i: {"id": int(cid), "name": name} for i, (cid, name) in enumerate(zip(ids, self.class_names))}


def _check_split(source, split, allowed=SPLITS):
    if split not in allowed:
        raise DataError(f"{source}: split must be one of {', '.join(allowed)}; got {split!r}")


def _check_num_classes(where, have, num_classes, names=None, what="classes"):
    if num_classes is not None and int(num_classes) != have:
        listed = f" ({', '.join(names)})" if names else ""
        raise DataError(f"{where}: has {have} {what}{listed} but model.num_classes is {num_classes}; "
                        f"set model.num_classes: {have}")


# --- shapes: the embedded generator ------------------------------------------------------------
def shapes_source(data_config, split: str, num_classes: int | None = None) -> RecordSource:
    """The embedded procedural dataset as records.

    ``train`` is generator images ``0 .. num_train-1``; ``val`` is images
    ``SHAPES_VAL_INDEX_OFFSET + i`` for ``i < num_val`` (disjoint from train). ``image_id``
    is the index within the split.
    """
    _check_split("shapes", split)
    _check_num_classes("the shapes source", len(SHAPES_CLASS_NAMES), num_classes, SHAPES_CLASS_NAMES)
    shapes = data_config.shapes
    count = int(shapes.num_train if split == "train" else shapes.num_val)
    offset = 0 if split == "train" else SHAPES_VAL_INDEX_OFFSET
    gen = ShapesGenerator(
        image_size=tuple(shapes.image_size),
        max_objects=shapes.max_objects,
        seed=data_config.seed,
        min_size=shapes.object_size[0],
        max_size=shapes.object_size[1],
    )
    h, w = gen.image_size

    def _draw(i):
        s = gen.sample(int(i) + offset)
        return s["image"], s["masks"], s["classes"]

    def _record(i):
        image, masks, classes = tf.numpy_function(_draw, [i], [tf.uint8, tf.uint8, tf.int32], stateful=False)
        image.set_shape((h, w, 3))
        masks.set_shape((None, h, w))
        classes.set_shape((None,))
        return {"image": image, "masks": masks, "classes": classes, "image_id": i}

    records = tf.data.Dataset.range(count).map(_record, num_parallel_calls=tf.data.AUTOTUNE)
    return RecordSource(records, SHAPES_CLASS_NAMES, count)


# --- COCO instances JSON -------------------------------------------------------------------------
def coco_source(data_config, split: str, num_classes: int | None = None,
                category_map: dict | None = None, progress: bool = True) -> RecordSource | None:
    """Records of a COCO split, or None when the split has no annotation file (val).

    ``category_map`` (``{index: {"id", "name"}}``, e.g. the training split's
    :attr:`RecordSource.category_map`) fixes the class index of each category id;
    without it the file's own categories are numbered in increasing id order.
    ``num_classes`` (``model.num_classes``) must equal the number of categories. Training
    records come in a freshly shuffled (seeded) order each epoch.
    """
    _check_split("coco", split)
    ds = coco_dataset(data_config, split, category_map=category_map, progress=progress)
    if ds is None:
        return None
    _check_num_classes(str(ds.annotation_file), ds.num_classes, num_classes, what="categories")
    records = ds.records(shuffle=split == "train", seed=int(data_config.seed))
    ids = tuple(v["id"] for v in ds.category_map.values())
    return RecordSource(records, ds.class_names, len(ds), ids, ds.bad)


def _labels_category_map(labels_config):
    """The category map a config's labels fix (a trained model's), or None."""
    if labels_config is None or not labels_config.category_ids:
        return None
    names = labels_config.class_names
    return {i: {"id": int(cid), **({"name": str(names[i])} if names else {})}  # no name: the file's
            for i, cid in enumerate(labels_config.category_ids)}


def _open_coco(config, splits):
    """Train first; the others get its category map (or the labels' one, if the config has it)."""
    cmap = _labels_category_map(config.labels)
    out = {}
    for split in sorted(splits, key=lambda s: s != "train"):
        src = coco_source(config.data, split, config.model.num_classes, category_map=cmap)
        if split == "train":
            cmap = src.category_map
        out[split] = src
    return out


# --- CIS680 homework files --------------------------------------------------------------------
def cis680_sources(data_config, splits=SPLITS, num_classes: int | None = None, progress: bool = True) -> dict:
    """The seeded ``train`` / ``val`` (alias ``test``) splits of the CIS680 files, from one scan.

    The split is ``data_config.cis680.val_fraction`` (0.2: the homework's 80/20) of the
    images, drawn with ``data_config.seed``. Training records come in a freshly shuffled
    order each epoch. Both splits share one reader and one bad-record log.
    """
    for split in splits:
        _check_split("cis680", split, SPLITS + ("test",))
    _check_num_classes("the cis680 source", len(CIS680_CLASS_NAMES), num_classes, CIS680_CLASS_NAMES)
    ds = cis680_dataset(data_config, progress=progress)
    train, val = ds.split(data_config.cis680.val_fraction, data_config.seed)
    out = {}
    for split in splits:
        indices = train if split == "train" else val
        records = ds.records(indices, shuffle=split == "train", seed=int(data_config.seed))
        out[split] = RecordSource(records, CIS680_CLASS_NAMES, len(indices), CIS680_CATEGORY_IDS, ds.bad)
    return out


def cis680_source(data_config, split: str, num_classes: int | None = None) -> RecordSource:
    """One CIS680 split (see :func:`cis680_sources`; opening both at once scans the files once)."""
    return cis680_sources(data_config, (split,), num_classes)[split]


# --- the registry ---------------------------------------------------------------------------------
class SourceKind(NamedTuple):
    """One entry of :data:`SOURCES`: how to open splits, and the optional packages it reads with."""

    open_splits: object  # (config, splits) -> {split: RecordSource | None}
    requires: tuple = ()


SOURCES = {
    "shapes": SourceKind(lambda config, splits: {
        s: shapes_source(config.data, s, config.model.num_classes) for s in splits}),
    "coco": SourceKind(_open_coco, requires=("pycocotools", "PIL")),
    "cis680": SourceKind(
        lambda config, splits: cis680_sources(config.data, splits, config.model.num_classes),
        requires=("h5py", "pycocotools")),
}


def open_sources(config, splits=SPLITS) -> dict:
    """The ``splits`` of ``config.data.source``, opened together.

    Returns:
        ``{split: RecordSource or None}`` (None: the source has no such split, e.g. COCO
        without ``val_annotations``).
    """
    name = config.data.source
    if name not in SOURCES:
        raise ValueError(f"data.source must be one of {', '.join(SOURCES)}; got {name!r}")
    kind = SOURCES[name]
    missing = [m for m in kind.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"data.source={name!r} needs {', '.join(missing)}, which is not installed "
                           f"(pip install {' '.join('pillow' if m == 'PIL' else m for m in missing)})")
    return kind.open_splits(config, tuple(splits))


def load_source(config, split: str) -> RecordSource | None:
    """One split of ``config.data.source`` (a RecordSource, or None: no such split).

    A COCO split other than ``train`` opened alone numbers its classes by
    ``config.labels.category_ids`` when set (a trained model's), else by its own file;
    to get the training split's numbering, open both with :func:`open_sources`.
    """
    return open_sources(config, (split,))[split]
