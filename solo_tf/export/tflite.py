"""The ``tflite`` format: a fixed canvas for LiteRT, builtin ops only.

``images`` (1, H, W, 3) uint8 (or float32, ``input_dtype``) already letterboxed (top-left,
zero padding), detections in canvas pixels. The graph is converted from the fixed-canvas
SavedModel (:func:`solo_tf.export.saved_model.write_canvas_saved_model`) with builtin ops
only and checked op by op after conversion (:func:`check_builtin_ops`). ``quantize`` none |
fp16 | dynamic | int8 (int8 calibrates on images of the model's training data source,
:mod:`solo_tf.export.calibration`). A side file ``OUT.json`` describes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from solo_tf.export import ExportError, register_format
from solo_tf.export.calibration import calibration_canvases
from solo_tf.export.files import check_choice, file_result, metadata, quiet, staged_file, write_pair

QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")
# The model's layers that int8 quantizes fully (convert_tflite); the rest stays float.
INT8_LAYERS = ("normalize", "backbone", "fpn")


def write_tflite(model, out, options, quantize="none", calibration=None, overwrite=False):
    """A fixed-canvas ``.tflite`` (batch 1), builtin ops only (see the module doc).

    Args:
        options: :class:`solo_tf.export.ExportOptions`.
        calibration: int8 only: (N, H, W, 3) canvases (uint8 or float 0-255).

    Returns:
        :class:`solo_tf.export.ExportResult` (``ops``: the graph's op names).
    """
    from solo_tf.export.saved_model import write_canvas_saved_model

    check_choice("quantize", quantize, QUANTIZATIONS)
    if quantize == "int8" and (calibration is None or len(calibration) == 0):
        raise ExportError("quantize='int8' needs calibration images (the training config's data, or images)")
    dest = Path(out)
    h, w = options.canvas_for(model)
    meta = metadata(model, options, "tflite", quantize,
                    inputs={"images": f"{options.input_dtype} (1, {h}, {w}, 3) RGB 0-255, letterboxed top-left"})
    with staged_file(dest, overwrite) as tmp:
        saved = tmp / "saved_model"
        write_canvas_saved_model(model, options, saved, batch=1)
        data = convert_tflite(saved, quantize, calibration, options.input_dtype, int8_scopes=INT8_LAYERS)
        ops = check_builtin_ops(data)
        meta["ops"] = sorted(set(ops))
        write_pair(dest, data, meta)
    return file_result(dest, "tflite", quantize, meta, ops)


def convert_tflite(saved_model_dir, quantize="none", calibration=None, input_dtype="uint8",
                   int8_scopes=INT8_LAYERS) -> bytes:
    """SavedModel (``serving_default``) -> TFLite flatbuffer with builtin ops only.

    Args:
        quantize: none (fp32) | fp16 (fp16 weights) | dynamic (int8 weights, float
            activations) | int8 (see below).
        calibration: int8 only: canvases (N, H, W, 3) 0-255.
        input_dtype: the graph's input dtype, for the calibration samples.
        int8_scopes: int8 only: the Keras layers to quantize, as name scopes of the graph's
            ops (a layer's name, or ``model/layer``).

    int8 quantizes the weights and activations of the ops under ``int8_scopes`` (the
    normalisation, the backbone and the pyramid: nearly all of the weights and most of the
    time), calibrated on ``calibration``, and keeps the heads and the decoder in float: the
    decoder's scores, IoUs and Matrix NMS decay need more than 8 bits, the converter's int8
    rewrite of its pad / maximum (local max) breaks the same-scale rule and fails, and with
    int8 head convs on a MobileNetV3 backbone LiteRT 2.3's XNNPACK delegate aborts at the
    first invoke (double free; the same file runs without the delegate). The mobile preset's
    int8 file is 0.29x its fp32 file (0.30x with the pyramid in float).
    """
    import tensorflow as tf

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
        data = quiet(converter.convert)
        if quantize == "int8":
            from tensorflow.lite.python import convert as tflite_convert

            names = _op_output_names(data)
            float_nodes = [n for n in names if not any(_in_scope(n, scope) for scope in int8_scopes)]
            if len(float_nodes) == len(names):
                raise ExportError(f"int8: no op under {', '.join(int8_scopes)} found in the graph")
            data = quiet(tflite_convert.mlir_quantize, data, disable_per_channel=False, fully_quantize=False,
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
    """True when any part of a (fused) tensor name lies under ``scope`` (``layer`` or
    ``model/layer``) at any depth; traced graphs add ``_<n>`` to each level
    (``solo_1/backbone_1/...``)."""
    levels = [rf"{re.escape(part)}(_\d+)?" for part in scope.split("/")]
    pattern = re.compile("(^|/)" + "/".join(levels) + "/")
    return any(pattern.search(part) for part in name.split(";"))


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
    """The ops of a TFLite flatbuffer; raises :class:`solo_tf.export.ExportError` naming
    every Flex (SELECT_TF_OPS) or custom op, which stock LiteRT cannot run."""
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


def _write(request):
    calibration = None
    if request.quantize == "int8":
        calibration = calibration_canvases(request.calibration, request.options.canvas_for(request.model),
                                           request.config)
    return write_tflite(request.model, request.out, request.options, request.quantize, calibration,
                        overwrite=request.overwrite)


register_format("tflite", _write, title="TFLite", suffix=".tflite", quantizations=QUANTIZATIONS,
                help="LiteRT, fixed canvas, batch 1, builtin ops only; --quantize fp16 | dynamic (int8 weights) "
                     "| int8 (calibrated on the training data)")
