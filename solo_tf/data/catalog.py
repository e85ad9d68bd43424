"""Every data source: the built-in ones (imported here, so they register themselves) and any
registered since (:func:`solo_tf.data.registry.register_source`).

The config reads its ``data.<name>`` sections from here and the tasks their hooks; neither
names a source. Like the registry it imports no TensorFlow: the built-in source modules
read with numpy (and pycocotools / PIL / h5py inside their functions).
"""

from __future__ import annotations

# Importing a source module registers it; the order is the order sources are listed in.
from solo_tf.data import cis680, coco, labelme, masks, shapes, yolo  # noqa: F401
from solo_tf.data.registry import SourceSpec, registered

# the source of a config that names none: the embedded generator, which needs no files
DEFAULT_SOURCE = shapes.NAME


def source_names() -> tuple:
    """The registered source names."""
    return tuple(registered())


def get_source(name: str) -> SourceSpec:
    """The registered source ``name``; a ValueError lists the ones there are."""
    sources = registered()
    if name not in sources:
        raise ValueError(f"data.source must be one of {', '.join(sources)}; got {name!r}")
    return sources[name]


def section_types() -> dict:
    """``{name: section dataclass}`` of every registered source."""
    return {name: spec.section for name, spec in registered().items()}
