"""Export a trained SOLO model: SavedModel (TF Serving), TFLite (LiteRT, builtin ops only), ONNX,
or any format registered with :func:`register_format`.

What is exported is what users call: every graph runs the network *and* the decoder (local
max, maskness, Matrix NMS) and returns one flat dict of fixed names and fixed shapes. Every
format builds its graph through :func:`solo_tf.inference.build_inference_model`.
Naming: B = images, K = ``postprocess.max_per_img`` detection slots, (H, W) = the network
canvas (``model.image_size`` or ``image_size=``), (h0, w0) = an input image's own size.

Detections (every format):

* ``detection_masks`` (B, K, H/4, W/4) uint8 0/1, on the canvas at stride 4 (default; at
  800x1344 and K=100 full-size float masks are ~430 MB per image). ``full_size_masks=True``:
  (B, K, h0, w0) in the input image's pixels for SavedModel, (B, K, H, W) on the canvas for
  the fixed-canvas formats.
* ``detection_scores`` (B, K) float32, descending, 0 in empty slots.
* ``detection_classes`` (B, K) int32: the dataset's own category ids when the model has
  them (``labels.category_ids``), else the 0-based class index; -1 in empty slots.
* ``detection_boxes`` (B, K, 4) float32 x1 y1 x2 y2 (x2, y2 exclusive): input-image pixels
  for SavedModel, canvas pixels for TFLite / ONNX; zeros in empty slots.
* ``num_detections`` (B,) int32: the filled slots, always the first ones.

SavedModel adds what a client needs to paste the stride-4 masks back into its image:
``letterbox_scale`` (B, 2) float32 (h'/h0, w'/w0), ``letterbox_offset`` (B, 2) float32
(zeros: the image sits top-left) and ``image_size`` (B, 2) int32 (h0, w0), all (y, x):
canvas (y, x) = image (y, x) * scale + offset, the resize's exact mapping (h', w' = the
resized image on the canvas).
``raw_outputs=True`` exports the raw head logits (``category_{l}``, ...) instead of
detections, for users who post-process elsewhere.

Formats, one module each, registered when imported (this package imports the built-in ones):

* ``saved_model`` (:mod:`solo_tf.export.saved_model`): TF Serving's layout ``OUT/<version>/``,
  signatures ``serving_default`` (uint8 images of any size) and ``image_bytes`` (JPEG/PNG).
* ``tflite`` (:mod:`solo_tf.export.tflite`): a fixed canvas, batch 1, builtin ops only;
  ``quantize`` none | fp16 | dynamic | int8 (:mod:`solo_tf.export.calibration`).
* ``onnx`` (:mod:`solo_tf.export.onnx`): the fixed-canvas graph with a dynamic batch.

The serving graphs themselves are in :mod:`solo_tf.export.signatures`; the description
written beside every export and the atomic destinations in :mod:`solo_tf.export.files`.

A new format is one module that calls :func:`register_format` with a writer
``write(request: ExportRequest) -> ExportResult``; ``export_model(format=name)`` and
``solo-tf export --format name`` then offer it. This package and the format modules import
neither Keras nor TensorFlow until a model is exported: ``solo-tf export --help`` lists
the registered formats without loading them (declared in :mod:`solo_tf.cli`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from solo_tf.config import PostprocessConfig
from solo_tf.export.files import ExportError, ExportResult, check_choice

INPUT_DTYPES = ("uint8", "float32")


@dataclass
class ExportOptions:
    """How the exported graph is built: post-processing, raw logits, mask size, input dtype
    and the canvas (H, W) (None: the model's ``image_size``)."""

    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    raw_outputs: bool = False
    full_size_masks: bool = False
    input_dtype: str = "uint8"
    canvas: tuple | None = None

    def canvas_for(self, model) -> tuple[int, int]:
        """(H, W) of the graph exported from ``model``."""
        return tuple(int(v) for v in (model.canvases[0] if self.canvas is None else self.canvas))


@dataclass
class ExportRequest:
    """What :func:`export_model` resolved, handed to a format's writer.

    ``model``: the :class:`solo_tf.model.SOLO`; ``out``: the destination (a file, or the
    base folder of a ``folder`` format); ``options``: :class:`ExportOptions`;
    ``config``: the training :class:`solo_tf.config.Config` or None; the rest as
    :func:`export_model` takes them (a writer reads the ones it uses).
    """

    format: str
    model: object
    out: Path
    options: ExportOptions
    quantize: str = "none"
    version: int = 1
    opset: int | None = None
    calibration: object = 100
    config: object = None
    overwrite: bool = False


# =============================================================================================
# the format registry
# =============================================================================================
@dataclass(frozen=True)
class ExportFormat:
    """One way to write a model: what ``export_model(format=name)`` and ``solo-tf export
    --format name`` do.

    ``write(request: ExportRequest) -> ExportResult``; ``title``: the name messages use;
    ``folder``: ``out`` is a folder (default ``export/<model stem>`` beside the ``.keras``
    file), else a file (default ``<model stem>[_<quantize>]<suffix>`` beside it);
    ``quantizations``: the ``quantize`` values it takes; ``help``: one line for ``--help``.
    """

    name: str
    write: Callable
    title: str
    folder: bool = False
    suffix: str = ""
    quantizations: tuple = ("none",)
    help: str = ""


FORMATS: dict[str, ExportFormat] = {}  # name -> format, in registration order (register_format)


def register_format(name, write, *, title=None, folder=False, suffix="", quantizations=("none",),
                    help="") -> ExportFormat:  # noqa: A002 - argparse's word
    """Add an export format (see :class:`ExportFormat`); returns it.

    Raises:
        ExportError: ``name`` is taken, is not a lower-case identifier, or the format has
            neither ``folder=True`` nor a file ``suffix`` (its default destination).
    """
    if not name.isidentifier() or name != name.lower():
        raise ExportError(f"an export format's name is a lower-case identifier, got {name!r}")
    if name in FORMATS:
        owner = getattr(FORMATS[name].write, "__module__", None) or "another module"
        raise ExportError(f"export format {name!r} is already registered (by {owner})")
    if not folder and not suffix.startswith("."):
        raise ExportError(f"export format {name!r}: give folder=True or a file suffix such as '.{name}'")
    quantizations = tuple(quantizations)
    if "none" not in quantizations:
        raise ExportError(f"export format {name!r}: quantizations must include 'none', got {quantizations}")
    FORMATS[name] = ExportFormat(name, write, title or name, bool(folder), suffix, quantizations, help)
    return FORMATS[name]


def unregister_format(name):
    """Remove a registered format (a plug-in's tests clean up with it)."""
    check_choice("format", name, tuple(FORMATS))
    del FORMATS[name]


def quantizations() -> tuple:
    """Every ``quantize`` value some registered format takes, ``none`` first."""
    seen = {}
    for fmt in FORMATS.values():
        seen.update(dict.fromkeys(fmt.quantizations))
    return tuple(seen)


# =============================================================================================
# public API
# =============================================================================================
def export_model(
    model_or_path,
    format="saved_model",  # noqa: A002 - the CLI's word
    out=None,
    *,
    quantize="none",
    image_size=None,
    calibration=100,
    config=None,
    raw_outputs=False,
    full_size_masks=False,
    version=1,
    postprocess=None,
    input_dtype="uint8",
    overwrite=False,
    opset=None,
) -> ExportResult:
    """Write ``model_or_path`` in a registered format (SavedModel, TFLite, ONNX, ...).

    Args:
        model_or_path: a :class:`solo_tf.model.SOLO` or a path to its ``.keras`` file.
        format: a name in :data:`FORMATS`: ``saved_model`` | ``tflite`` | ``onnx`` | ...
        out: SavedModel: the model base path (the export goes to ``out/<version>/``);
            TFLite / ONNX: the file. Default: beside the ``.keras`` file (``export/`` for a
            SavedModel, ``model[_<quantize>].tflite``, ``model.onnx``).
        quantize: TFLite only: ``none`` (fp32) | ``fp16`` | ``dynamic`` (int8 weights) |
            ``int8`` (full integer where an int8 kernel exists, calibrated).
        image_size: (H, W) canvas of the exported graph, multiples of 32; default the
            model's own. The weights do not depend on it.
        calibration: int8 only: the number of images drawn from the training data source
            of ``config``, or an iterable of RGB images (h, w, 3) to calibrate on.
        config: the training config (a :class:`solo_tf.config.Config`, a preset name or a
            YAML path) for int8 calibration data and default post-processing; default
            ``config.yaml`` beside the ``.keras`` file when there is one.
        raw_outputs: export the raw head logits instead of detections.
        full_size_masks: full-resolution masks instead of stride-4 ones (see module doc).
        version: SavedModel version folder (a positive integer, TF Serving's layout).
        postprocess: a :class:`solo_tf.config.PostprocessConfig` (or dict) for the in-graph
            decoder; default the model's own, else ``config``'s, else the defaults.
        input_dtype: TFLite / ONNX input, ``uint8`` or ``float32`` (0-255 either way).
        overwrite: replace an existing destination (else it is an error).
        opset: ONNX opset (default :data:`solo_tf.export.onnx.DEFAULT_OPSET`).

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportError (a ValueError): bad option, a destination that exists, a graph that
        needs a non-builtin TFLite op (named), a failed conversion.
        FileNotFoundError: the model file does not exist.
    """
    check_choice("format", format, tuple(FORMATS))
    fmt = FORMATS[format]
    check_choice("quantize", quantize, quantizations())
    check_choice("input_dtype", input_dtype, INPUT_DTYPES)
    if quantize not in fmt.quantizations:
        takers = " / ".join(f.title for f in FORMATS.values() if quantize in f.quantizations)
        raise ExportError(f"quantize={quantize!r} applies to {takers} only; format {format!r} is exported in float32")
    from solo_tf.settings import resolve  # Keras and the model: only when a model is exported

    settings = resolve(model_or_path, config=config, postprocess=postprocess)
    model, model_path = settings.model, settings.model_path
    canvas = None if image_size is None else _checked_canvas(model, image_size)
    # calibration images come from a config the user named or the one beside the model, never
    # from the defaults' generated shapes
    cfg = settings.config if settings.config_source != "defaults" else None
    options = ExportOptions(settings.postprocess, bool(raw_outputs), bool(full_size_masks), input_dtype, canvas)
    request = ExportRequest(format, model, _default_out(out, fmt, quantize, model_path), options, quantize=quantize,
                            version=version, opset=opset, calibration=calibration, config=cfg, overwrite=overwrite)
    return fmt.write(request)


def _checked_canvas(model, image_size):
    try:
        return model.variant.with_canvas(image_size).image_size
    except (ValueError, TypeError) as e:
        raise ExportError(f"image_size: {e}") from None


def _default_out(out, fmt: ExportFormat, quantize, model_path):
    if out is not None:
        return Path(out)
    if model_path is None:
        raise ExportError("out is required when exporting a model object (no .keras path to put it beside)")
    if fmt.folder:
        return model_path.parent / "export" / model_path.stem
    return model_path.with_name(f"{model_path.stem}{'' if quantize == 'none' else f'_{quantize}'}{fmt.suffix}")


# The built-in formats register themselves (after the registry above exists).
from solo_tf.export import saved_model, tflite, onnx  # noqa: E402, F401, I001
