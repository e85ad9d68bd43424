"""Export a trained SOLO model: SavedModel (TF Serving), TFLite (LiteRT, builtin ops only), ONNX.

What is exported is what users call: every graph runs the network *and* the decoder (local
max, maskness, Matrix NMS) and returns one flat dict of fixed names and fixed shapes.
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

Formats:

* ``saved_model``: TF Serving's layout ``OUT/<version>/`` with two signatures,
  ``serving_default`` (``images``: uint8 (B, h0, w0, 3) of any size, letterboxed inside the
  graph) and ``image_bytes`` (``image_bytes``: (B,) JPEG/PNG strings, each decoded and
  letterboxed inside the graph). ``assets.extra/solo_export.json`` describes it.
* ``tflite``: a fixed canvas, batch 1, ``images`` uint8 (1, H, W, 3) already letterboxed
  (top-left, zero padding); builtin ops only, checked op by op after conversion
  (:func:`check_builtin_ops`); ``quantize`` none | fp16 | dynamic | int8 (int8 calibrates on
  ``calibration`` images of the model's training data source).
* ``onnx``: the same fixed-canvas graph with a dynamic batch, through tf2onnx.

TFLite and ONNX get a side file ``OUT.json`` with the same description (canvas, mask
stride, class names and ids, outputs). Every write is atomic: the export is built in a hidden
temporary folder beside ``OUT`` and renamed into place, so a failed or interrupted export
leaves nothing at the destination.

The CLI (``solo-tf export``, declared in :mod:`solo_tf.cli` so ``--help`` needs no TensorFlow)
calls :func:`export_model`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from solo_tf.config import PostprocessConfig, section_from_dict  # noqa: E402
from solo_tf.decoder import MASK_STRIDE, decode  # noqa: E402
from solo_tf.io import atomic_dir, atomic_path  # noqa: E402
from solo_tf.saving import load_model  # noqa: E402

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")
# The model's layers that int8 quantizes fully (convert_tflite); the rest stays float.
INT8_LAYERS = ("normalize", "backbone", "fpn")
DETECTION_KEYS = ("detection_masks", "detection_scores", "detection_classes", "detection_boxes", "num_detections")
LETTERBOX_KEYS = ("letterbox_scale", "letterbox_offset", "image_size")
METADATA_NAME = "solo_export.json"
DEFAULT_OPSET = 17


class ExportError(ValueError):
    """An export cannot be written as asked; the message says why (and names the op, the
    file or the option)."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    ``path``: the SavedModel version folder, the ``.tflite`` or the ``.onnx`` file;
    ``files``: every path written (the side JSON included); ``size_bytes``: the model's size
    on disk; ``ops``: TFLite op names (builtin) of the converted graph, else empty;
    ``metadata``: the description written beside it.
    """

    path: Path
    format: str
    quantize: str
    size_bytes: int
    files: list = field(default_factory=list)
    ops: tuple = ()
    metadata: dict = field(default_factory=dict)


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
    opset=DEFAULT_OPSET,
) -> ExportResult:
    """Write ``model_or_path`` as a SavedModel, a TFLite or an ONNX file.

    Args:
        model_or_path: a :class:`solo_tf.model.SOLO` or a path to its ``.keras`` file.
        format: ``saved_model`` | ``tflite`` | ``onnx``.
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
        opset: ONNX opset.

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportError (a ValueError): bad option, a destination that exists, a graph that
        needs a non-builtin TFLite op (named), a failed conversion.
        FileNotFoundError: the model file does not exist.
    """
    _check_choice("format", format, FORMATS)
    _check_choice("quantize", quantize, QUANTIZATIONS)
    _check_choice("input_dtype", input_dtype, ("uint8", "float32"))
    if format != "tflite" and quantize != "none":
        raise ExportError(f"quantize={quantize!r} applies to TFLite only; format {format!r} is exported in float32")
    if format == "saved_model" and (not isinstance(version, int) or isinstance(version, bool) or version <= 0):
        raise ExportError(f"version must be a positive integer (TF Serving's version folder), got {version!r}")
    model_path = Path(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else None
    model = load_model(model_path) if model_path is not None else model_or_path
    cfg = _training_config(config, model_path)
    if image_size is not None:
        model = with_canvas(model, image_size)
    post = _postprocess_for(model, postprocess, cfg, config is not None)
    out = _default_out(out, format, quantize, model_path)
    options = ExportOptions(post, bool(raw_outputs), bool(full_size_masks), input_dtype)

    if format == "saved_model":
        return write_saved_model(model, out, version, options, overwrite=overwrite)
    calib = None
    if format == "tflite" and quantize == "int8":
        calib = calibration_canvases(calibration, model.model_config.image_size, cfg)
    if format == "tflite":
        return write_tflite(model, out, options, quantize, calib, overwrite=overwrite)
    return write_onnx(model, out, options, opset=opset, overwrite=overwrite)


@dataclass
class ExportOptions:
    """How the exported graph decodes: post-processing, raw logits, mask size, input dtype."""

    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    raw_outputs: bool = False
    full_size_masks: bool = False
    input_dtype: str = "uint8"


def model_labels(model):
    """(class_names, category_ids) of a SOLO model (``model.labels_config``); either may be None."""
    labels = model.labels_config
    return _opt_list(labels.class_names), _opt_list(labels.category_ids)


def with_canvas(model, image_size):
    """The same network (same weights) built for another canvas (H, W), multiples of 32."""
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0 or size[0] % 32 or size[1] % 32:
        raise ExportError(f"image_size must be two positive multiples of 32 (H W), got {tuple(image_size)}")
    if tuple(model.model_config.image_size) == size:
        return model
    config = model.get_config()
    config["model_config"] = dict(config["model_config"], image_size=list(size))
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


# =============================================================================================
# graph pieces (TensorFlow: these run inside the exported graphs)
# =============================================================================================
def _class_table(model):
    """(C,) int32 numpy: the id reported for each 0-based class (made a constant inside the
    traced graph: a tensor captured from outside would become an extra graph input)."""
    _, ids = model_labels(model)
    n = int(model.model_config.num_classes)
    return np.asarray(ids if ids else range(n), np.int32)


def _finish(dets, table, mask_thr):
    """Decoder output -> the exported dict: uint8 masks, dataset class ids."""
    classes = tf.cast(dets["detection_classes"], tf.int32)
    ids = tf.gather(tf.constant(table), tf.maximum(classes, 0))
    return {
        "detection_masks": tf.cast(dets["detection_masks"] > mask_thr, tf.uint8),
        "detection_scores": tf.cast(dets["detection_scores"], tf.float32),
        "detection_classes": tf.where(classes >= 0, ids, -1),
        "detection_boxes": tf.cast(dets["detection_boxes"], tf.float32),
        "num_detections": tf.cast(dets["num_detections"], tf.int32),
    }


def canvas_function(model, options: ExportOptions):
    """images on the canvas (B, H, W, 3) -> exported dict (detections or raw logits).

    The graph of the fixed-canvas formats, and the core of the SavedModel signatures.
    Boxes and masks are in canvas pixels.
    """
    cfg = model.model_config
    post = options.postprocess
    table = _class_table(model)

    def run(images):
        raw = model(tf.cast(images, tf.float32), training=False)
        if options.raw_outputs:
            return {k: tf.identity(v, name=k) for k, v in raw.items()}
        dets = decode(raw, cfg, post, full_size_masks=options.full_size_masks)
        return _finish(dets, table, float(post.mask_thr))

    return run


def serving_functions(model, options: ExportOptions):
    """The two SavedModel signatures as plain functions (traced by the caller).

    Both letterbox inside the graph with :func:`solo_tf.preprocess.letterbox` (the training
    pipeline's and Predictor's own preprocessing) and map detections back with
    :func:`solo_tf.preprocess.boxes_to_image` / :func:`~solo_tf.preprocess.masks_to_image`.

    Returns:
        dict ``serving_default``: images (B, h0, w0, 3) uint8 -> dict;
        ``image_bytes``: (B,) encoded JPEG/PNG strings -> dict. Outputs: the module doc.
    """
    from solo_tf.preprocess import letterbox

    cfg = model.model_config
    canvas_hw = tuple(int(v) for v in cfg.image_size)
    post = options.postprocess
    table = _class_table(model)
    raw_fn = canvas_function(model, dataclasses.replace(options, raw_outputs=True))

    def on_canvas(canvases):
        """(B, H, W, 3) float32 -> raw logits, or detections with stride-4 soft masks."""
        raw = raw_fn(canvases)
        if options.raw_outputs:
            return raw
        dets = decode(raw, cfg, post, full_size_masks=False)
        return dict(_finish(dets, table, float(post.mask_thr)), soft_masks=dets["detection_masks"])

    def serving_default(images):
        # the signature checks the dtype; a wrong rank or channel count would otherwise
        # surface as an obscure error deep in the resize: fail here, naming the shape
        images = tf.ensure_shape(images, (None, None, None, 3))
        batch = tf.shape(images)[0]
        image_hw = tf.shape(images)[1:3]
        canvas, valid, _ = letterbox(images, canvas_hw)
        out = _to_images(on_canvas(canvas), valid, (image_hw[0], image_hw[1]), canvas_hw, options)
        out.update(_letterbox_outputs(tf.tile(tf.stack(valid)[None], [batch, 1]), tf.tile(image_hw[None], [batch, 1])))
        return out

    def decode_one(encoded):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        canvas, valid, _ = letterbox(image, canvas_hw)
        return canvas, tf.stack(valid), tf.shape(image)[:2]

    def image_bytes(encoded):
        encoded = tf.ensure_shape(encoded, (None,))
        canvases, valids, sizes = tf.map_fn(
            decode_one, encoded,
            fn_output_signature=(tf.TensorSpec((*canvas_hw, 3), tf.float32), tf.TensorSpec((2,), tf.int32),
                                 tf.TensorSpec((2,), tf.int32)),
        )
        dets = on_canvas(canvases)  # one batched forward pass for images of any sizes
        if options.raw_outputs:
            out = dict(dets)
        else:
            out = _per_image(dets, valids, sizes, canvas_hw, options)
        out.update(_letterbox_outputs(valids, sizes))
        return out

    return {"serving_default": serving_default, "image_bytes": image_bytes}


def _letterbox_outputs(valids, sizes):
    """``letterbox_scale`` (B, 2) (h'/h0, w'/w0), ``letterbox_offset`` (B, 2) zeros (the
    image sits top-left), ``image_size`` (B, 2) (h0, w0): canvas (y, x) = image (y, x) *
    scale + offset, exactly the resize's own mapping."""
    scale = tf.cast(valids, tf.float32) / tf.cast(sizes, tf.float32)
    return {"letterbox_scale": scale, "letterbox_offset": tf.zeros_like(scale), "image_size": sizes}


def _to_images(dets, valid, image_hw, canvas_hw, options: ExportOptions):
    """Detections of a batch sharing one letterbox -> boxes (and full-size masks) in the
    image's pixels. ``valid`` (h', w') and ``image_hw`` (h0, w0) are scalar pairs."""
    from solo_tf.preprocess import boxes_to_image, masks_to_image

    if options.raw_outputs:
        return dict(dets)
    out = {k: v for k, v in dets.items() if k != "soft_masks"}
    if options.full_size_masks:
        soft = masks_to_image(dets["soft_masks"], valid, image_hw, canvas_size=canvas_hw)  # (B, K, h0, w0)
        binary = soft > float(options.postprocess.mask_thr)
        out["detection_masks"] = tf.cast(binary, tf.uint8)
        # tight boxes of the image-size masks, as Predictor reports them
        out["detection_boxes"] = _tight_boxes(binary)
    else:
        out["detection_boxes"] = boxes_to_image(dets["detection_boxes"], valid, image_hw)
    return out


def _tight_boxes(masks):
    """Tight boxes of binary masks of a dynamic size (``decoder.masks_to_boxes`` needs a
    static one). masks (B, K, h, w) bool -> (B, K, 4) float32 x1 y1 x2 y2 (x2, y2
    exclusive), zeros for an empty mask."""
    h = tf.cast(tf.shape(masks)[-2], tf.float32)
    w = tf.cast(tf.shape(masks)[-1], tf.float32)
    cols = tf.reduce_any(masks, axis=-2)  # (B, K, w)
    rows = tf.reduce_any(masks, axis=-1)  # (B, K, h)
    xs = tf.range(w, dtype=tf.float32)
    ys = tf.range(h, dtype=tf.float32)
    boxes = tf.stack([
        tf.reduce_min(tf.where(cols, xs, w), axis=-1), tf.reduce_min(tf.where(rows, ys, h), axis=-1),
        tf.reduce_max(tf.where(cols, xs + 1.0, 0.0), axis=-1), tf.reduce_max(tf.where(rows, ys + 1.0, 0.0), axis=-1),
    ], axis=-1)
    return tf.where(tf.reduce_any(cols, axis=-1, keepdims=True), boxes, 0.0)


def _per_image(dets, valids, sizes, canvas_hw, options: ExportOptions):
    """Images of different sizes (``image_bytes``): map each one's detections to its own
    pixels. Full-size masks are zero-padded to the largest image of the batch
    (``image_size`` says how much of each is real)."""
    max_hw = tf.reduce_max(sizes, axis=0)

    def one(args):
        d, valid, hw = args
        d = {k: v[None] for k, v in d.items()}
        out = _to_images(d, (valid[0], valid[1]), (hw[0], hw[1]), canvas_hw, options)
        out = {k: v[0] for k, v in out.items()}
        if options.full_size_masks:
            out["detection_masks"] = tf.pad(out["detection_masks"], [[0, 0], [0, max_hw[0] - hw[0]],
                                                                      [0, max_hw[1] - hw[1]]])
        return out

    k = int(options.postprocess.max_per_img)
    h, w = canvas_hw
    mask_shape = (k, None, None) if options.full_size_masks else (k, h // MASK_STRIDE, w // MASK_STRIDE)
    signature = {
        "detection_masks": tf.TensorSpec(mask_shape, tf.uint8),
        "detection_scores": tf.TensorSpec((k,), tf.float32),
        "detection_classes": tf.TensorSpec((k,), tf.int32),
        "detection_boxes": tf.TensorSpec((k, 4), tf.float32),
        "num_detections": tf.TensorSpec((), tf.int32),
    }
    return tf.map_fn(one, (dets, valids, sizes), fn_output_signature=signature)


# =============================================================================================
# writers
# =============================================================================================
def write_saved_model(model, out, version, options: ExportOptions, overwrite=False) -> ExportResult:
    """SavedModel in TF Serving's layout ``out/<version>/`` (see the module doc)."""
    base = Path(out)
    dest = base / str(int(version))
    fns = serving_functions(model, options)
    specs = {
        "serving_default": [tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")],
        "image_bytes": [tf.TensorSpec((None,), tf.string, name="image_bytes")],
    }
    meta = _metadata(model, options, "saved_model", "none", input_desc={
        "serving_default": {"images": "uint8 (B, h0, w0, 3) RGB, any size"},
        "image_bytes": {"image_bytes": "string (B,) encoded JPEG/PNG"},
    })
    with _staged_dir(dest, overwrite) as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name in ("serving_default", "image_bytes"):
            archive.add_endpoint(name, fns[name], input_signature=specs[name])
        _quiet(archive.write_out, str(tmp), verbose=False)
        (tmp / "assets.extra").mkdir(exist_ok=True)
        (tmp / "assets.extra" / METADATA_NAME).write_text(json.dumps(meta, indent=2))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return ExportResult(dest, "saved_model", "none", size, [str(dest)], (), meta)


def write_tflite(model, out, options: ExportOptions, quantize="none", calibration=None, overwrite=False) -> ExportResult:
    """A fixed-canvas ``.tflite`` (batch 1), builtin ops only (see the module doc).

    Args:
        calibration: int8 only: (N, H, W, 3) canvases (uint8 or float 0-255).
    """
    _check_choice("quantize", quantize, QUANTIZATIONS)
    if quantize == "int8" and (calibration is None or len(calibration) == 0):
        raise ExportError("quantize='int8' needs calibration images (the training config's data, or images)")
    dest = Path(out)
    h, w = (int(v) for v in model.model_config.image_size)
    meta = _metadata(model, options, "tflite", quantize,
                     input_desc={"images": f"{options.input_dtype} (1, {h}, {w}, 3) RGB 0-255, letterboxed top-left"})
    with _staged_file(dest, overwrite) as tmp:
        saved = tmp / "saved_model"
        _write_canvas_saved_model(model, options, saved, batch=1)
        data = convert_tflite(saved, quantize, calibration, options.input_dtype,
                              int8_scopes=tuple(f"{model.name}/{layer}" for layer in INT8_LAYERS))
        ops = check_builtin_ops(data)
        meta["ops"] = sorted(set(ops))
        _write_pair(dest, data, meta)
    return ExportResult(dest, "tflite", quantize, dest.stat().st_size, [str(dest), str(_side_json(dest))],
                        tuple(ops), meta)


def write_onnx(model, out, options: ExportOptions, opset=DEFAULT_OPSET, overwrite=False) -> ExportResult:
    """A fixed-canvas ``.onnx`` (dynamic batch) through tf2onnx (see the module doc)."""
    from tf2onnx import tf_loader
    from tf2onnx.convert import from_graph_def

    dest = Path(out)
    h, w = (int(v) for v in model.model_config.image_size)
    meta = _metadata(model, options, "onnx", "none",
                     input_desc={"images": f"{options.input_dtype} (B, {h}, {w}, 3) RGB 0-255, letterboxed top-left"})
    with _staged_file(dest, overwrite) as tmp:
        # Through a SavedModel, as for TFLite: it freezes the constants the Keras layers
        # capture (tf2onnx's from_function would take them for extra graph inputs).
        saved = tmp / "saved_model"
        _write_canvas_saved_model(model, options, saved, batch=None)
        try:
            graph_def, inputs, outputs, renames = _quiet(
                tf_loader.from_saved_model, str(saved), None, None, "serve", ["serving_default"],
                return_tensors_to_rename=True,
            )
            proto, _ = _quiet(from_graph_def, graph_def, name="solo", input_names=inputs, output_names=outputs,
                              opset=int(opset), tensors_to_rename=renames)
        except Exception as e:  # tf2onnx raises plain Exceptions naming the op
            raise ExportError(f"ONNX conversion failed: {e}") from e
        meta["outputs_onnx"] = _onnx_output_names(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "solo_export", json.dumps(meta)
        _write_pair(dest, proto.SerializeToString(), meta)
    return ExportResult(dest, "onnx", "none", dest.stat().st_size, [str(dest), str(_side_json(dest))], (), meta)


def _write_canvas_saved_model(model, options, path, batch=1):
    """The fixed-canvas graph as a SavedModel (``serving_default``), the converters' input."""
    h, w = (int(v) for v in model.model_config.image_size)
    dtype = tf.uint8 if options.input_dtype == "uint8" else tf.float32
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", canvas_function(model, options),
                         input_signature=[tf.TensorSpec((batch, h, w, 3), dtype, name="images")])
    _quiet(archive.write_out, str(path), verbose=False)


# =============================================================================================
# TFLite: conversion and the builtin-op check
# =============================================================================================
def convert_tflite(saved_model_dir, quantize="none", calibration=None, input_dtype="uint8",
                   int8_scopes=tuple(f"solo/{layer}" for layer in INT8_LAYERS)) -> bytes:
    """SavedModel (``serving_default``) -> TFLite flatbuffer with builtin ops only.

    Args:
        quantize: none (fp32) | fp16 (fp16 weights) | dynamic (int8 weights, float
            activations) | int8 (see below).
        calibration: int8 only: canvases (N, H, W, 3) 0-255.
        input_dtype: the graph's input dtype, for the calibration samples.
        int8_scopes: int8 only: the Keras layers to quantize, as ``model/layer`` name
            scopes of the graph's ops.

    int8 quantizes the weights and activations of the ops under ``int8_scopes`` (the
    normalisation, the backbone and the pyramid: nearly all of the weights and most of the
    time), calibrated on ``calibration``, and keeps the heads and the decoder in float: the
    decoder's scores, IoUs and Matrix NMS decay need more than 8 bits, the converter's int8
    rewrite of its pad / maximum (local max) breaks the same-scale rule and fails, and with
    int8 head convs on a MobileNetV3 backbone LiteRT 2.3's XNNPACK delegate aborts at the
    first invoke (double free; the same file runs without the delegate). The mobile preset's
    int8 file is 0.29x its fp32 file (0.30x with the pyramid in float).
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        samples = [np.asarray(c, np.float32) for c in calibration]

        def representative():
            for c in samples:
                yield [(np.clip(np.round(c), 0, 255).astype(np.uint8) if input_dtype == "uint8" else c)[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        # Calibrate only (float graph + activation ranges), then quantize with the decoder's
        # ops left out: what tf.lite.experimental.QuantizationDebugger does for selective
        # quantization, without its extra debug conversions.
        converter._experimental_calibrate_only = True
    try:
        data = _quiet(converter.convert)
        if quantize == "int8":
            from tensorflow.lite.python import convert as tflite_convert

            names = _op_output_names(data)
            float_nodes = [n for n in names if not any(_in_scope(n, scope) for scope in int8_scopes)]
            if len(float_nodes) == len(names):
                raise ExportError(f"int8: no op under {', '.join(int8_scopes)} found in the graph")
            data = _quiet(tflite_convert.mlir_quantize, data, disable_per_channel=False, fully_quantize=False,
                          denylisted_nodes=float_nodes)
        return data
    except ExportError:
        raise
    except Exception as e:  # ConverterError lists the ops that are not builtins
        raise ExportError(f"TFLite conversion with builtin ops only failed: {_converter_summary(e)}") from e


def _op_output_names(data: bytes) -> list:
    """Output tensor names of every op of a TFLite flatbuffer (fused names joined by ';')."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    names = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            for j in range(op.OutputsLength()):
                names.append(graph.Tensors(op.Outputs(j)).Name().decode())
    return names


def _in_scope(name, scope):
    """True when any part of a (fused) tensor name lies under ``scope`` (``model/layer``);
    traced graphs add ``_<n>`` to each level (``solo_1/backbone_1/...``)."""
    levels = [rf"{re.escape(part)}(_\d+)?" for part in scope.split("/")]
    pattern = re.compile("^" + "/".join(levels) + "/")
    return any(pattern.match(part) for part in name.split(";"))


def tflite_ops(data: bytes) -> list:
    """Operator names used by a TFLite flatbuffer, one per op code (builtin names like
    ``CONV_2D``; custom and Flex ops by their custom code, e.g. ``FlexScaleAndTranslate``)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(data, 0)
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            ops.append(custom.decode() if isinstance(custom, bytes) else str(custom))
        else:
            ops.append(names.get(builtin, f"BUILTIN_{builtin}"))
    return ops


def check_builtin_ops(data: bytes) -> list:
    """The ops of a TFLite flatbuffer; raises :class:`ExportError` naming every Flex
    (SELECT_TF_OPS) or custom op, which stock LiteRT cannot run."""
    from ai_edge_litert import schema_py_generated as schema

    builtin_names = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    ops = tflite_ops(data)
    bad = sorted({op for op in ops if op not in builtin_names or op == "CUSTOM"})
    if bad:
        flex = [op for op in bad if op.startswith("Flex")]
        kind = "Flex (SELECT_TF_OPS)" if flex else "custom"
        raise ExportError(
            f"the TFLite graph uses {kind} op(s) {', '.join(bad)}, which stock LiteRT does not run; "
            "only TFLite builtin ops are allowed"
        )
    return ops


def _converter_summary(error) -> str:
    """The TFLite converter's (long, MLIR) error reduced to the ops it could not map."""
    text = str(error)
    ops = sorted(set(re.findall(r"'(tf\.[A-Za-z0-9_]+)' op", text)))
    if ops:
        return f"op(s) with no TFLite builtin: {', '.join(ops)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else text))[:600]


# =============================================================================================
# int8 calibration data
# =============================================================================================
def calibration_canvases(calibration, canvas_size, config=None) -> np.ndarray:
    """Canvases (N, H, W, 3) float32 0-255 for int8 calibration.

    Args:
        calibration: an int N (the first N training images of ``config``'s data source,
            letterboxed as in training without augmentation) or an iterable of RGB images.
        canvas_size: (H, W).
        config: a :class:`solo_tf.config.Config` (needed for an int N).
    """
    from solo_tf.preprocess import letterbox

    if isinstance(calibration, (int, np.integer)) and not isinstance(calibration, bool):
        n = int(calibration)
        if n <= 0:
            raise ExportError(f"calibration must be a positive number of images, got {n}")
        if config is None:
            raise ExportError(
                "quantize='int8' calibrates on the model's training data: pass config= (the training "
                "config, or --config on the command line), or a list of images as calibration"
            )
        images = _training_images(config, n)
    else:
        images = list(calibration)
        if not images:
            raise ExportError("calibration: no images given")
    return np.stack([letterbox(np.asarray(im), canvas_size)[0] for im in images]).astype(np.float32)


def _training_images(config, n):
    """The first ``n`` images (h, w, 3) uint8 of the training split of ``config.data``."""
    from solo_tf.data.sources import load_source
    src = load_source(config, "train")
    if src is None or src.num_records == 0:
        raise ExportError(f"data.source={config.data.source!r} has no training images to calibrate on")
    images = [r["image"].numpy() for r in src.records.take(n)]
    if len(images) < n:
        print(f"[solo-tf] int8 calibration: the training split has {len(images)} images (asked for {n})",
              file=sys.stderr)
    return images


# =============================================================================================
# parity: compare two sets of detections
# =============================================================================================
def mask_iou(a, b) -> float:
    """IoU of two binary masks of the same shape (1.0 for two empty masks)."""
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare_detections(reference, other, score_tol=1e-3, borderline=0.0):
    """Match one image's detections of two exports of the same model.

    Args:
        reference, other: dicts of numpy arrays for ONE image: ``detection_masks`` (K, h, w)
            binary (or soft, > 0.5), ``detection_scores`` (K,), ``detection_classes`` (K,),
            ``num_detections`` ().
        score_tol: scores further apart than this do not match.
        borderline: a detection scored below ``borderline + score_tol`` may be missing on the
            other side (it sits on the decoder's keep threshold; pass ``update_thr``).

    Returns:
        dict ``matched`` (int), ``unmatched`` (non-borderline detections without a partner,
        both sides), ``max_score_diff`` and ``min_mask_iou`` over matched pairs (0 and 1
        when none), ``ious`` (list per matched pair).

    Greedy by the reference's score order: each detection takes the unmatched partner of the
    same class with a score within ``score_tol`` and the highest mask IoU.
    """
    ma, sa, ca = _unpack(reference)
    mb, sb, cb = _unpack(other)
    used = np.zeros(len(sb), bool)
    ious, diffs, missing_a = [], [], 0
    for i in range(len(sa)):
        best, best_iou = -1, -1.0
        for j in range(len(sb)):
            if used[j] or cb[j] != ca[i] or abs(sb[j] - sa[i]) > score_tol:
                continue
            iou = mask_iou(ma[i], mb[j])
            if iou > best_iou:
                best, best_iou = j, iou
        if best < 0:
            missing_a += int(sa[i] >= borderline + score_tol)
            continue
        used[best] = True
        ious.append(best_iou)
        diffs.append(abs(sb[best] - sa[i]))
    missing_b = int(np.sum((~used) & (sb >= borderline + score_tol)))
    return {
        "matched": len(ious),
        "unmatched": missing_a + missing_b,
        "max_score_diff": float(max(diffs)) if diffs else 0.0,
        "min_mask_iou": float(min(ious)) if ious else 1.0,
        "ious": ious,
    }


def mask_agreement(references, others, min_score=0.0):
    """How well a quantised export's masks agree with the float one's, over many images.

    For every reference detection scored >= ``min_score``: the best IoU with a detection
    of the same class in ``other`` (0 when there is none), whatever their scores.

    Args:
        references, others: lists of per-image dicts as :func:`compare_detections` takes.

    Returns:
        dict ``mean_iou`` (1.0 when there are no reference detections), ``recall`` (share
        with a partner of IoU >= 0.5), ``count``.
    """
    ious = []
    for ref, other in zip(references, others):
        ref_masks, ref_scores, ref_classes = _unpack(ref)
        masks, _, classes = _unpack(other)
        for mask, score, cls in zip(ref_masks, ref_scores, ref_classes):
            if score >= min_score:
                ious.append(max([mask_iou(mask, m) for m, c in zip(masks, classes) if c == cls], default=0.0))
    if not ious:
        return {"mean_iou": 1.0, "recall": 1.0, "count": 0}
    return {"mean_iou": float(np.mean(ious)), "recall": float(np.mean(np.asarray(ious) >= 0.5)), "count": len(ious)}


def _unpack(d):
    """One image's filled slots: binary masks (soft ones thresholded at 0.5), scores, classes."""
    n = int(np.asarray(d["num_detections"]))
    masks = np.asarray(d["detection_masks"])[:n]
    masks = masks > (0.5 if masks.dtype.kind == "f" else 0)
    return masks, np.asarray(d["detection_scores"], np.float64)[:n], np.asarray(d["detection_classes"])[:n]


# =============================================================================================
# helpers
# =============================================================================================
def _check_choice(name, value, choices):
    if value not in choices:
        raise ExportError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _opt_list(x):
    return None if x is None else list(x)


def _training_config(config, model_path):
    from solo_tf.config import Config, load_config

    if isinstance(config, Config) or config is None and model_path is None:
        return config
    if config is not None:
        return load_config(config)
    beside = model_path.with_name("config.yaml")
    return load_config(beside) if beside.is_file() else None


def _postprocess_for(model, postprocess, cfg, cfg_given):
    """The decoder settings: ``postprocess=``, else a config the caller named, else the
    model's own (saved with it), else the config beside the model, else the defaults."""
    own = getattr(model, "postprocess_config", None)
    from_cfg = getattr(cfg, "postprocess", None) if cfg is not None else None
    if postprocess is not None:
        pc = postprocess if isinstance(postprocess, PostprocessConfig) else section_from_dict(
            PostprocessConfig, dict(postprocess), "postprocess")
    elif cfg_given and from_cfg is not None:
        pc = from_cfg
    else:
        pc = own or from_cfg or PostprocessConfig()
    pc.validate()
    return pc


def _default_out(out, format, quantize, model_path):  # noqa: A002
    if out is not None:
        return Path(out)
    if model_path is None:
        raise ExportError("out is required when exporting a model object (no .keras path to put it beside)")
    if format == "saved_model":
        return model_path.parent / "export" / model_path.stem
    if format == "tflite":
        suffix = "" if quantize == "none" else f"_{quantize}"
        return model_path.with_name(f"{model_path.stem}{suffix}.tflite")
    return model_path.with_suffix(".onnx")


def _metadata(model, options: ExportOptions, format, quantize, input_desc):  # noqa: A002
    cfg = model.model_config
    names, ids = model_labels(model)
    h, w = (int(v) for v in cfg.image_size)
    k = int(options.postprocess.max_per_img)
    if options.raw_outputs:
        outputs = {"raw head logits": "category_{l} (B, S, S, C) and the variant's mask outputs"}
    else:
        where = "image" if format == "saved_model" else "canvas"
        if options.full_size_masks:
            mshape = "(B, K, h0, w0)" if format == "saved_model" else f"(B, K, {h}, {w})"
        else:
            mshape = f"(B, K, {h // MASK_STRIDE}, {w // MASK_STRIDE}) on the canvas"
        outputs = {
            "detection_masks": f"uint8 {mshape}",
            "detection_scores": "float32 (B, K)",
            "detection_classes": "int32 (B, K) " + ("dataset category ids" if ids else "0-based class index")
                                 + ", -1 = empty",
            "detection_boxes": f"float32 (B, K, 4) x1 y1 x2 y2 in {where} pixels",
            "num_detections": "int32 (B,)",
        }
    if format == "saved_model":
        outputs.update({"letterbox_scale": "float32 (B, 2) (y, x): canvas = image * scale + offset",
                        "letterbox_offset": "float32 (B, 2) (y, x)", "image_size": "int32 (B, 2) (h0, w0)"})
    return {
        "format": format,
        "quantize": quantize,
        "variant": cfg.variant,
        "backbone": cfg.backbone,
        "canvas": [h, w],
        "mask_stride": 1 if options.full_size_masks else MASK_STRIDE,
        "full_size_masks": bool(options.full_size_masks),
        "raw_outputs": bool(options.raw_outputs),
        "max_detections": k,
        "num_classes": int(cfg.num_classes),
        "class_names": names,
        "category_ids": ids,
        "postprocess": dataclasses.asdict(options.postprocess),
        "inputs": input_desc,
        "outputs": outputs,
        "letterbox": "s = min(H/h0, W/w0); the image resized to (h', w') = (round(h0*s), round(w0*s)), "
                     "bilinear antialiased, clipped to 0-255, top-left on a zero canvas; canvas (y, x) = "
                     "image (y, x) * (h'/h0, w'/w0)",
    }


def _side_json(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _onnx_output_names(proto):
    return [o.name for o in proto.graph.output]


def _check_destination(dest: Path, overwrite: bool, folder: bool):
    if dest.exists() and not overwrite:
        raise ExportError(f"{dest} already exists (pass overwrite=True / --overwrite"
                          + (", or another version)" if folder else ")"))
    if not folder and dest.is_dir():
        raise ExportError(f"{dest} is a folder; give a file path for this format")


@contextlib.contextmanager
def _staged_dir(dest: Path, overwrite: bool):
    """Build a folder in a hidden temporary folder beside ``dest`` and rename it into place
    on success (:func:`solo_tf.io.atomic_dir`); on any failure, KeyboardInterrupt included,
    nothing is left at ``dest``."""
    dest = Path(dest)
    _check_destination(dest, overwrite, folder=True)
    with atomic_dir(dest) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _staged_file(dest: Path, overwrite: bool):
    """A hidden work folder beside ``dest`` for the conversion; the model and its side JSON
    are then written atomically (:func:`solo_tf.io.atomic_path`), the JSON first, so a
    model is never there without its description. The work folder is always removed."""
    dest = Path(dest)
    _check_destination(dest, overwrite, folder=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".work", dir=dest.parent) as work:
        yield Path(work)


def _write_pair(dest: Path, data: bytes, meta: dict):
    """The side JSON, then the model, each whole or not at all."""
    with atomic_path(_side_json(dest)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def _quiet(fn, *args, **kwargs):
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
