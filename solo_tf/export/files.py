"""What every export format shares on the file side: its errors and result, the description
written beside it (:func:`metadata`), and destinations that appear whole or not at all.

Every write is atomic: a folder is built in a hidden temporary folder beside its destination
and renamed into place (:func:`staged_dir`); a file is converted in a hidden work folder and
written with its side JSON through :func:`solo_tf.io.atomic_path` (:func:`staged_file`,
:func:`write_pair`), so a failed or interrupted export leaves nothing at the destination.

Imports neither Keras nor TensorFlow (the CLI reads the format registry before either loads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from solo_tf.io import atomic_dir, atomic_path

METADATA_NAME = "solo_export.json"


class ExportError(ValueError):
    """An export cannot be written as asked; the message says why (and names the op, the
    file or the option)."""


@dataclass
class ExportResult:
    """What :func:`solo_tf.export.export_model` wrote.

    ``path``: the SavedModel version folder, the ``.tflite`` or the ``.onnx`` file (a
    format's main output); ``files``: every path written (the side JSON included);
    ``size_bytes``: the model's size on disk; ``ops``: TFLite op names (builtin) of the
    converted graph, else empty; ``metadata``: the description written beside it.
    """

    path: Path
    format: str
    quantize: str
    size_bytes: int
    files: list = field(default_factory=list)
    ops: tuple = ()
    metadata: dict = field(default_factory=dict)


def check_choice(name, value, choices):
    if value not in choices:
        raise ExportError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def model_labels(model):
    """(class_names, category_ids) of a SOLO model (``model.labels_config``); either may be None."""
    labels = model.labels_config

    def opt_list(x):
        return None if x is None else list(x)

    return opt_list(labels.class_names), opt_list(labels.category_ids)


def metadata(model, options, format, quantize, inputs, *, image_pixels=False, extra_outputs=None):  # noqa: A002
    """The description of an export (``solo_export.json`` / the side JSON).

    Args:
        model: the exported :class:`solo_tf.model.SOLO`.
        options: the :class:`solo_tf.export.ExportOptions` it was exported with.
        format, quantize: the format's name and the quantisation.
        inputs: a description of each input (of each signature).
        image_pixels: the graph maps its detections to the input image's own pixels (it
            letterboxes inside); else they are in canvas pixels.
        extra_outputs: descriptions of the outputs the format adds.
    """
    from solo_tf.decoder import MASK_STRIDE

    cfg = model.model_config
    names, ids = model_labels(model)
    h, w = options.canvas_for(model)
    if options.raw_outputs:
        outputs = {"raw head logits": "category_{l} (B, S, S, C) and the variant's mask outputs"}
    else:
        if options.full_size_masks:
            mshape = "(B, K, h0, w0)" if image_pixels else f"(B, K, {h}, {w})"
        else:
            mshape = f"(B, K, {h // MASK_STRIDE}, {w // MASK_STRIDE}) on the canvas"
        outputs = {
            "detection_masks": f"uint8 {mshape}",
            "detection_scores": "float32 (B, K)",
            "detection_classes": "int32 (B, K) " + ("dataset category ids" if ids else "0-based class index")
                                 + ", -1 = empty",
            "detection_boxes": f"float32 (B, K, 4) x1 y1 x2 y2 in {'image' if image_pixels else 'canvas'} pixels",
            "num_detections": "int32 (B,)",
        }
    outputs.update(extra_outputs or {})
    return {
        "format": format,
        "quantize": quantize,
        "variant": cfg.variant,
        "backbone": cfg.backbone,
        "canvas": [h, w],
        "mask_stride": 1 if options.full_size_masks else MASK_STRIDE,
        "full_size_masks": bool(options.full_size_masks),
        "raw_outputs": bool(options.raw_outputs),
        "max_detections": int(options.postprocess.max_per_img),
        "num_classes": int(cfg.num_classes),
        "class_names": names,
        "category_ids": ids,
        "postprocess": dataclasses.asdict(options.postprocess),
        "inputs": inputs,
        "outputs": outputs,
        "letterbox": "s = min(H/h0, W/w0); the image resized to (h', w') = (round(h0*s), round(w0*s)), "
                     "bilinear antialiased, clipped to 0-255, top-left on a zero canvas; canvas (y, x) = "
                     "image (y, x) * (h'/h0, w'/w0)",
    }


def side_json(path: Path) -> Path:
    """``OUT.json``: the description beside a single-file export ``OUT``."""
    return path.with_name(path.name + ".json")


def _check_destination(dest: Path, overwrite: bool, folder: bool):
    if dest.exists() and not overwrite:
        raise ExportError(f"{dest} already exists (pass overwrite=True / --overwrite"
                          + (", or another version)" if folder else ")"))
    if not folder and dest.is_dir():
        raise ExportError(f"{dest} is a folder; give a file path for this format")


@contextlib.contextmanager
def staged_dir(dest: Path, overwrite: bool):
    """Build a folder in a hidden temporary folder beside ``dest`` and rename it into place
    on success (:func:`solo_tf.io.atomic_dir`); on any failure, KeyboardInterrupt included,
    nothing is left at ``dest``."""
    dest = Path(dest)
    _check_destination(dest, overwrite, folder=True)
    with atomic_dir(dest) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def staged_file(dest: Path, overwrite: bool):
    """A hidden work folder beside ``dest`` for the conversion; the model and its side JSON
    are then written atomically (:func:`write_pair`). The work folder is always removed."""
    dest = Path(dest)
    _check_destination(dest, overwrite, folder=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".work", dir=dest.parent) as work:
        yield Path(work)


def write_pair(dest: Path, data: bytes, meta: dict):
    """The side JSON, then the model, each whole or not at all (:func:`solo_tf.io.atomic_path`),
    so a model is never there without its description."""
    with atomic_path(side_json(dest)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def file_result(dest: Path, format, quantize, meta, ops=()) -> ExportResult:  # noqa: A002
    """The :class:`ExportResult` of a single-file export written by :func:`write_pair`."""
    return ExportResult(dest, format, quantize, dest.stat().st_size, [str(dest), str(side_json(dest))],
                        tuple(ops), meta)


def quiet(fn, *args, **kwargs):
    """Run a TF/tf2onnx call with its INFO logging turned down (they log per tensor)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("tensorflow", "tf2onnx", "absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        return fn(*args, **kwargs)
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
