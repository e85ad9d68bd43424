"""The ``saved_model`` format: TF Serving's layout ``OUT/<version>/`` with two signatures.

``serving_default`` (``images``: uint8 (B, h0, w0, 3) of any size, letterboxed inside the
graph) and ``image_bytes`` (``image_bytes``: (B,) JPEG/PNG strings, each decoded and
letterboxed inside the graph), detections in each image's own pixels
(:func:`solo_tf.export.signatures.serving_functions`). ``assets.extra/solo_export.json``
describes it.

Also :func:`write_canvas_saved_model`: the fixed-canvas graph as a SavedModel, the input of
the TFLite and ONNX converters.
"""

from __future__ import annotations

import json
from pathlib import Path

from solo_tf.export import ExportError, register_format
from solo_tf.export.files import METADATA_NAME, ExportResult, metadata, quiet, staged_dir

LETTERBOX_OUTPUTS = {
    "letterbox_scale": "float32 (B, 2) (y, x): canvas = image * scale + offset",
    "letterbox_offset": "float32 (B, 2) (y, x)",
    "image_size": "int32 (B, 2) (h0, w0)",
}


def write_saved_model(model, out, version, options, overwrite=False) -> ExportResult:
    """SavedModel in TF Serving's layout ``out/<version>/`` (see the module doc).

    Args:
        version: the version folder, a positive integer.
        options: :class:`solo_tf.export.ExportOptions` (``input_dtype`` does not apply: the
            signatures take uint8 images or encoded bytes).
    """
    import tensorflow as tf

    from solo_tf.export.signatures import serving_functions

    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise ExportError(f"version must be a positive integer (TF Serving's version folder), got {version!r}")
    dest = Path(out) / str(int(version))
    specs = {
        "serving_default": [tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")],
        "image_bytes": [tf.TensorSpec((None,), tf.string, name="image_bytes")],
    }
    meta = metadata(model, options, "saved_model", "none", image_pixels=True, extra_outputs=LETTERBOX_OUTPUTS, inputs={
        "serving_default": {"images": "uint8 (B, h0, w0, 3) RGB, any size"},
        "image_bytes": {"image_bytes": "string (B,) encoded JPEG/PNG"},
    })
    with staged_dir(dest, overwrite) as tmp:
        _write_archive(model, serving_functions(model, options), specs, tmp)
        (tmp / "assets.extra").mkdir(exist_ok=True)
        (tmp / "assets.extra" / METADATA_NAME).write_text(json.dumps(meta, indent=2))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return ExportResult(dest, "saved_model", "none", size, [str(dest)], (), meta)


def write_canvas_saved_model(model, options, path, batch=1):
    """The fixed-canvas graph (:func:`solo_tf.export.signatures.canvas_function`) as a
    SavedModel with one signature, ``serving_default``: images (batch, H, W, 3) of
    ``options.input_dtype``. Through a SavedModel the converters see the constants the
    Keras layers capture frozen (tf2onnx's from_function would take them for graph inputs)."""
    import tensorflow as tf

    from solo_tf.export.signatures import canvas_function

    h, w = options.canvas_for(model)
    dtype = tf.uint8 if options.input_dtype == "uint8" else tf.float32
    _write_archive(model, {"serving_default": canvas_function(model, options)},
                   {"serving_default": [tf.TensorSpec((batch, h, w, 3), dtype, name="images")]}, path)


def _write_archive(model, functions, specs, path):
    """``functions`` (name -> function of ``specs[name]``) as the endpoints of a SavedModel
    holding ``model``'s weights."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in functions.items():
        archive.add_endpoint(name, fn, input_signature=specs[name])
    quiet(archive.write_out, str(path), verbose=False)


def _write(request):
    return write_saved_model(request.model, request.out, request.version, request.options,
                             overwrite=request.overwrite)


register_format("saved_model", _write, title="SavedModel", folder=True,
                help="TF Serving's OUT/<version>/, signatures serving_default (uint8 images of any size) "
                     "and image_bytes (JPEG/PNG)")
