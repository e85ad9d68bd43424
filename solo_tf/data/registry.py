"""The registry of data sources: what ``data.source: NAME`` means.

A data source is one module. It holds three things and registers them here with
:func:`register_source`:

* its config section, a dataclass read from ``data.NAME`` in the YAML (strictly, like every
  section; a ``validate()`` method, if it has one, raises ``ValueError`` naming the key);
* a numpy reader per split: an object with ``len(reader)`` and ``reader.load(i)`` returning
  one record (the record contract below), raising
  :class:`~solo_tf.data.errors.DataError` for a bad one;
* an ``open`` function turning the section into those readers, one :class:`Split` per
  split asked for.

Record contract (what ``load`` returns; n and h, w vary per record)::

    image     (h, w, 3) uint8 RGB
    masks     (n, h, w) uint8 0/1, one per instance
    classes   (n,) int32, 0-based class index
    image_id  () int64

:mod:`solo_tf.data.sources` turns any :class:`Split` into ``tf.data`` records with one
wrapper; :mod:`solo_tf.data.catalog` imports the built-in source modules (so they are
registered) and is where the config and the tasks look sources up. This module imports no
TensorFlow and nothing of the model, so :mod:`solo_tf.config` can read the sections
anywhere.

A source added from outside the package (a plug-in, a test) registers itself the same way
before the config naming it is loaded::

    @dataclass
    class FakeSourceConfig:
        num_images: int = 4

    register_source("fake", section=FakeSourceConfig, open=open_fake)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, NamedTuple, Sequence

from solo_tf.data.errors import BadRecordLog

SPLITS = ("train", "val")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Split(NamedTuple):
    """One split of a source as its numpy reader and what describes it.

    ``reader``: ``len(reader)`` and ``reader.load(i) -> record`` (the module's record
    contract); ``class_names``: one per class index; ``category_ids``: the dataset's own id
    of each class index (COCO category ids), or None when the index is the id;
    ``bad_records``: the log of records skipped while reading (``data.skip_bad``), shared
    by the splits of one scan; ``indices``: which of the reader's items form the split
    (default: all); ``shuffle``: a fresh seeded order each epoch; ``image_size``: the
    (h, w) of every image when it is fixed (static shapes), else None;
    ``annotation_file``: a COCO instances JSON holding this split, crowd regions included,
    that evaluation scores against (None: ground truth is built from the records);
    ``origin``: what the split was read from, for messages.
    """

    reader: object
    class_names: tuple
    category_ids: tuple | None = None
    bad_records: BadRecordLog | None = None
    indices: Sequence[int] | None = None
    shuffle: bool = False
    image_size: tuple | None = None
    annotation_file: str | None = None
    origin: str = ""

    @property
    def num_records(self) -> int:
        return len(self.reader) if self.indices is None else len(self.indices)


class SourceSpec(NamedTuple):
    """A registered source (see :func:`register_source`)."""

    name: str
    section: type
    open: Callable  # (data_config, splits, labels_config) -> {split: Split | None}
    requires: tuple = ()
    eval_data: Callable | None = None  # (section, path, images) -> bool


_SOURCES: dict[str, SourceSpec] = {}


def register_source(name: str, *, section: type, open: Callable, requires: Sequence[str] = (),
                    eval_data: Callable | None = None) -> SourceSpec:
    """Register the data source ``name`` (``data.source: name``, settings under ``data.name``).

    Args:
        name: lower-case identifier; it is also the key of the config section.
        section: a dataclass with a default for every field: the ``data.<name>`` section.
        open: ``open(data_config, splits, labels_config)`` -> ``{split: Split or None}``
            for the split names asked for (None: the source has no such split, e.g. no
            validation files). ``labels_config`` is the config's ``labels`` (a trained
            model's class names and ids, to number classes the same way) or None.
        requires: importable modules the reader needs (checked, with a pip hint, when the
            source is opened).
        eval_data: ``eval_data(section, path, images) -> bool``: if ``path`` (a file or
            folder given to ``solo-tf evaluate --data``) is data of this format, point the
            section's validation split at it and return True; else return False.

    Raises:
        ValueError: a bad name, a section that is not a dataclass, or a name already taken.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"register_source: name must be a lower-case identifier, got {name!r}")
    if not (isinstance(section, type) and dataclasses.is_dataclass(section)):
        raise ValueError(f"register_source({name!r}): section must be a dataclass type, got {section!r}")
    if name in _SOURCES:
        raise ValueError(f"register_source: a data source named {name!r} is registered already")
    spec = SourceSpec(name, section, open, tuple(requires), eval_data)
    _SOURCES[name] = spec
    return spec


def unregister_source(name: str) -> None:
    """Remove a registered source (a test's, a plug-in's); unknown names are an error."""
    if name not in _SOURCES:
        raise ValueError(f"unregister_source: no data source named {name!r}")
    del _SOURCES[name]


def registered() -> dict[str, SourceSpec]:
    """The sources registered so far, by name, in registration order (a copy)."""
    return dict(_SOURCES)
