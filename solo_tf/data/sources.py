"""Data sources as ``tf.data`` records: one wrapper for every source's numpy reader.

A source (registered in :mod:`solo_tf.data.registry`, listed in
:mod:`solo_tf.data.catalog`) opens its splits as numpy readers
(:class:`~solo_tf.data.registry.Split`); :func:`split_records` turns any of them into
unbatched records, decoded in parallel::

    image     (h, w, 3) uint8 RGB
    masks     (n, h, w) uint8 0/1, one per instance
    classes   (n,) int32, 0-based class index
    image_id  () int64

A :class:`RecordSource` is one split of one source: its records, its class names, the
dataset's own id of each class (COCO category ids), how many records it has and the
:class:`~solo_tf.data.errors.BadRecordLog` of what reading it skipped. :func:`open_sources`
opens the splits of ``config.data.source`` together, so what the splits share is read
once and handed over explicitly (COCO's validation split gets the training split's
category map, CIS680's two splits share one scan of the files). Nothing is cached between
calls.

This module imports nothing from :mod:`~solo_tf.data.pipeline`, which turns records into
model batches.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from solo_tf.data.catalog import get_source
from solo_tf.data.errors import BadRecordLog, DataError
from solo_tf.data.registry import SPLITS, Split


class RecordSource(NamedTuple):
    """One split of a data source.

    ``records``: unbatched ``tf.data`` records (the module's record contract);
    ``class_names``: one per class index; ``num_records``: records per epoch;
    ``category_ids``: the dataset's own id of each class index (COCO category ids), or None
    when the index is the id; ``bad_records``: the log of records skipped while reading
    (``data.skip_bad``; it keeps counting while ``records`` is iterated), or None for a
    source that cannot have bad records; ``annotation_file``: a COCO instances JSON of the
    split that evaluation scores against (crowd regions included), or None.
    """

    records: tf.data.Dataset
    class_names: tuple
    num_records: int
    category_ids: tuple | None = None
    bad_records: BadRecordLog | None = None
    annotation_file: str | None = None

    @property
    def category_map(self) -> dict:
        """``{class index: {"id": id, "name": name}}`` (ids default to the index)."""
        ids = self.category_ids or range(len(self.class_names))
        return {i: {"id": int(cid), "name": name} for i, (cid, name) in enumerate(zip(ids, self.class_names))}


def split_records(split: Split, skip_bad: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Unbatched ``tf.data`` records of a numpy reader's split, read in parallel.

    ``split.reader.load(i)`` runs for each of ``split.indices`` (default
    ``range(len(reader))``) inside ``tf.numpy_function`` with ``num_parallel_calls=AUTOTUNE``;
    with ``split.shuffle`` the order is drawn afresh (seeded by ``seed``) each epoch before
    reading, which is cheap. A :class:`~solo_tf.data.errors.DataError` from ``load`` raises
    (the TF error carries its message, which names the file and record); with ``skip_bad``
    the record is dropped and counted in ``split.bad_records``.
    """
    reader = split.reader
    idx = np.asarray(range(len(reader)) if split.indices is None else list(split.indices), np.int64)
    log = split.bad_records
    if skip_bad and log is None:
        raise ValueError("split_records: skip_bad needs the split's bad_records log to count what it skips")
    h, w = split.image_size if split.image_size is not None else (None, None)

    def _read(i):
        try:
            r = reader.load(int(i))
        except DataError as e:
            if not skip_bad:
                raise
            log.skip(e.reason or "bad image", str(e))
            return (np.zeros((1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.uint8), np.zeros((0,), np.int32),
                    np.int64(-1), np.bool_(False))
        return (np.ascontiguousarray(r["image"], np.uint8), np.ascontiguousarray(r["masks"], np.uint8),
                np.asarray(r["classes"], np.int32), np.int64(r["image_id"]), np.bool_(True))

    def _record(i):
        image, masks, classes, image_id, ok = tf.numpy_function(
            _read, [i], [tf.uint8, tf.uint8, tf.int32, tf.int64, tf.bool], stateful=False)
        image.set_shape((h, w, 3))
        masks.set_shape((None, h, w))
        classes.set_shape((None,))
        image_id.set_shape(())
        ok.set_shape(())
        return {"image": image, "masks": masks, "classes": classes, "image_id": image_id}, ok

    ds = tf.data.Dataset.from_tensor_slices(idx)
    if split.shuffle and len(idx):
        ds = ds.shuffle(len(idx), seed=int(seed), reshuffle_each_iteration=True)
    ds = ds.map(_record, num_parallel_calls=tf.data.AUTOTUNE)
    if skip_bad:
        ds = ds.filter(lambda record, ok: ok)
    return ds.map(lambda record, ok: record)


def _check_num_classes(split: Split, num_classes):
    have = len(split.class_names)
    if num_classes is not None and int(num_classes) != have:
        names = ", ".join(split.class_names[:10]) + (", ..." if have > 10 else "")
        raise DataError(f"{split.origin or 'the data source'}: has {have} classes ({names}) but model.num_classes "
                        f"is {num_classes}; set model.num_classes: {have}")


def open_data(data_config, splits=SPLITS, num_classes: int | None = None, labels=None) -> dict:
    """The ``splits`` of ``data_config.source`` as :class:`RecordSource` (or None: no such
    split, e.g. COCO without ``val_annotations``), opened together.

    ``num_classes`` (``model.num_classes``) must equal the source's number of classes;
    ``labels`` (a :class:`~solo_tf.config.LabelsConfig`, a trained model's) fixes how
    classes are numbered where the source can follow it.
    """
    name = data_config.source
    spec = get_source(name)
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"data.source={name!r} needs {', '.join(missing)}, which is not installed "
                           f"(pip install {' '.join('pillow' if m == 'PIL' else m for m in missing)})")
    opened = spec.open(data_config, tuple(splits), labels)
    out = {}
    for s in splits:
        split = opened.get(s)
        if split is None:
            out[s] = None
            continue
        _check_num_classes(split, num_classes)
        records = split_records(split, skip_bad=bool(data_config.skip_bad), seed=int(data_config.seed))
        out[s] = RecordSource(records, tuple(split.class_names), split.num_records,
                              tuple(split.category_ids) if split.category_ids is not None else None,
                              split.bad_records, split.annotation_file)
    return out


def open_sources(config, splits=SPLITS) -> dict:
    """The ``splits`` of ``config.data.source``, opened together (:func:`open_data` with the
    config's ``model.num_classes`` and ``labels``).

    Returns:
        ``{split: RecordSource or None}``.
    """
    return open_data(config.data, splits, config.model.num_classes, config.labels)


def load_source(config, split: str) -> RecordSource | None:
    """One split of ``config.data.source`` (a RecordSource, or None: no such split).

    A COCO split other than ``train`` opened alone numbers its classes by
    ``config.labels.category_ids`` when set (a trained model's), else by its own file;
    to get the training split's numbering, open both with :func:`open_sources`.
    """
    return open_sources(config, (split,))[split]


# Shorthands for scripts, tests and benchmarks: one split of a built-in source read from a
# data config, whatever its ``source`` says (a new source needs none: open_data reads any).
def _one(name, data_config, split, num_classes):
    data_config = copy.copy(data_config)
    data_config.source = name
    return open_data(data_config, (split,), num_classes)[split]


def shapes_source(data_config, split: str, num_classes: int | None = None) -> RecordSource:
    """The embedded generator's ``split`` (``data.shapes``)."""
    return _one("shapes", data_config, split, num_classes)


def coco_source(data_config, split: str, num_classes: int | None = None) -> RecordSource | None:
    """A COCO ``split`` read alone (its own category numbering), or None without a file."""
    return _one("coco", data_config, split, num_classes)


def cis680_source(data_config, split: str, num_classes: int | None = None) -> RecordSource:
    """One CIS680 split (opening both with :func:`open_data` scans the files once)."""
    return _one("cis680", data_config, split, num_classes)
