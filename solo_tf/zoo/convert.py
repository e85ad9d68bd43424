"""A zoo checkpoint as a solo-tf model: :func:`convert` (once, cached) and :func:`resolve_model`.

The model is built from the entry's preset (``configs/<preset>.yaml``) and overrides, at the
reference's test scale (the canvas of :attr:`~solo_tf.zoo.registry.ZooEntry.canvas`, with
the transposed one for portrait images: R50/R101 800x1344, light-448 448x768), with the COCO
class names and category ids (:data:`solo_tf.reference_weights.COCO_CLASS_NAMES`,
:data:`~solo_tf.reference_weights.REFERENCE_COCO_CATEGORY_IDS`) and the reference's test-time
post-processing (:data:`REFERENCE_POSTPROCESS`); the checkpoint is loaded with
:func:`solo_tf.reference_weights.load_reference_checkpoint` (strict: every tensor must fit)
and the model saved, atomically, to ``$SOLO_TF_HOME/models/<name>/model.keras`` beside the
``config.yaml`` it was built from.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from solo_tf.zoo.download import fetch, home
from solo_tf.zoo.registry import ENTRIES, ZooEntry, get

# the reference's test_cfg (WXinlong/SOLO and mmdetection 2.x alike): Matrix NMS on the
# masks at their own stride 4, gaussian kernel, sigma 2
REFERENCE_POSTPROCESS = dict(score_thr=0.1, mask_thr=0.5, nms_pre=500, update_thr=0.05, max_per_img=100,
                             kernel="gaussian", sigma=2.0, nms_stride=4)


def zoo_config(name: str | ZooEntry):
    """The :class:`solo_tf.config.Config` of zoo entry ``name``'s model (see the module docstring)."""
    from solo_tf.config import LabelsConfig, PostprocessConfig, load_config
    from solo_tf.reference_weights import COCO_CLASS_NAMES, REFERENCE_COCO_CATEGORY_IDS

    entry = name if isinstance(name, ZooEntry) else get(name)
    if not entry.supported:
        raise ValueError(f"zoo model {entry.name!r} does not run in solo-tf: {entry.unsupported}")
    cfg = load_config(entry.preset)
    cfg.name = entry.name
    cfg.model = dataclasses.replace(
        cfg.model, **dict(entry.overrides), image_size=entry.canvas, portrait_canvas=True,
        num_classes=len(REFERENCE_COCO_CATEGORY_IDS), backbone_weights=None, init_weights=None)
    cfg.labels = LabelsConfig(class_names=list(COCO_CLASS_NAMES), category_ids=list(REFERENCE_COCO_CATEGORY_IDS))
    cfg.postprocess = PostprocessConfig(**REFERENCE_POSTPROCESS)
    return cfg.validate()


def model_path(name: str | ZooEntry) -> Path:
    """Where the converted ``.keras`` of zoo entry ``name`` is (or will be) cached:
    ``$SOLO_TF_HOME/models/<name>/model.keras``, its ``config.yaml`` beside it (what
    ``solo-tf evaluate`` reads beside a model; ``eval/`` goes there too)."""
    entry = name if isinstance(name, ZooEntry) else get(name)
    return home() / "models" / entry.name / "model.keras"


def convert(name: str | ZooEntry, *, checkpoint: str | os.PathLike | None = None, force: bool = False,
            progress: bool = True) -> Path:
    """The cached ``.keras`` model of zoo entry ``name``, converted on first use.

    Args:
        name: a zoo entry name (``solo-tf models``) or entry.
        checkpoint: a local copy of the entry's checkpoint to convert instead of the cached
            download (it is read as it is: its hash is not checked).
        force: convert again even where a cached ``.keras`` exists.
        progress: show the download's progress bar.

    Raises:
        as :func:`solo_tf.zoo.download.fetch`, and ValueError where the checkpoint does not
        fit the entry's model (:func:`~solo_tf.reference_weights.load_reference_checkpoint`).
    """
    entry = name if isinstance(name, ZooEntry) else get(name)
    dest = model_path(entry)
    if dest.is_file() and not force and checkpoint is None:
        return dest
    cfg = zoo_config(entry)  # before the download: an unsupported entry fails here
    source = Path(checkpoint) if checkpoint is not None else fetch(entry, progress=progress)

    from solo_tf.saving import save_model
    from solo_tf.model import SOLO
    from solo_tf.reference_weights import load_reference_checkpoint

    model = SOLO(cfg.model, cfg.loss, cfg.labels, cfg.postprocess)
    load_reference_checkpoint(model, source, strict=True)
    cfg.to_yaml(dest.with_name("config.yaml"))
    return save_model(model, dest)  # last: a model file means a finished conversion


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint argument (``model.init_weights``) as a path: a zoo name becomes its
    verified, cached checkpoint (:func:`~solo_tf.zoo.download.fetch`); anything else is
    returned as it is."""
    if isinstance(name_or_path, str) and name_or_path in ENTRIES and not os.path.exists(name_or_path):
        return fetch(name_or_path)
    return Path(name_or_path)


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A model argument as a path: a path (or any string that is not a zoo name) is returned
    as it is; a zoo name becomes its cached ``.keras`` (downloaded and converted on first use).
    A file of that name in the working folder wins over the zoo."""
    if isinstance(name_or_path, str) and name_or_path in ENTRIES and not os.path.exists(name_or_path):
        return convert(name_or_path)
    return Path(name_or_path)
