"""The ``onnx`` format: the fixed-canvas graph with a dynamic batch, through tf2onnx.

``images`` (B, H, W, 3) uint8 (or float32, ``input_dtype``) already letterboxed (top-left,
zero padding), detections in canvas pixels: the graph of the TFLite format, converted from
the fixed-canvas SavedModel (:func:`solo_tf.export.saved_model.write_canvas_saved_model`).
The description is in the file's metadata (``solo_export``) and in a side file ``OUT.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from solo_tf.export import ExportError, register_format
from solo_tf.export.files import file_result, metadata, quiet, staged_file, write_pair

DEFAULT_OPSET = 17


def write_onnx(model, out, options, opset=DEFAULT_OPSET, overwrite=False):
    """A fixed-canvas ``.onnx`` (dynamic batch) through tf2onnx (see the module doc).

    Args:
        options: :class:`solo_tf.export.ExportOptions`.
        opset: the ONNX opset.

    Returns:
        :class:`solo_tf.export.ExportResult`.
    """
    from tf2onnx import tf_loader
    from tf2onnx.convert import from_graph_def

    from solo_tf.export.saved_model import write_canvas_saved_model

    dest = Path(out)
    h, w = options.canvas_for(model)
    meta = metadata(model, options, "onnx", "none",
                    inputs={"images": f"{options.input_dtype} (B, {h}, {w}, 3) RGB 0-255, letterboxed top-left"})
    with staged_file(dest, overwrite) as tmp:
        saved = tmp / "saved_model"
        write_canvas_saved_model(model, options, saved, batch=None)
        try:
            graph_def, inputs, outputs, renames = quiet(
                tf_loader.from_saved_model, str(saved), None, None, "serve", ["serving_default"],
                return_tensors_to_rename=True,
            )
            proto, _ = quiet(from_graph_def, graph_def, name="solo", input_names=inputs, output_names=outputs,
                             opset=int(opset), tensors_to_rename=renames)
        except Exception as e:  # tf2onnx raises plain Exceptions naming the op
            raise ExportError(f"ONNX conversion failed: {e}") from e
        meta["outputs_onnx"] = [o.name for o in proto.graph.output]
        entry = proto.metadata_props.add()
        entry.key, entry.value = "solo_export", json.dumps(meta)
        write_pair(dest, proto.SerializeToString(), meta)
    return file_result(dest, "onnx", "none", meta)


def _write(request):
    opset = DEFAULT_OPSET if request.opset is None else request.opset
    return write_onnx(request.model, request.out, request.options, opset=opset, overwrite=request.overwrite)


register_format("onnx", _write, title="ONNX", suffix=".onnx",
                help="ONNX Runtime, fixed canvas, dynamic batch (--opset)")
