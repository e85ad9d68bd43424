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
# int8: the scopes (Keras layers) that stay float, with everything computed from them; the
# network before them (backbone after its stem, pyramid, heads, mask feature) is quantized,
# so the graph turns float once, into the decoder. See convert_tflite and int8_float_nodes.
INT8_FLOAT_SCOPES = ("decoder",)
# int8: op types kept float wherever they are: LiteRT's XNNPack delegate has no int8 kernel
# for them and the builtin int8 one is ~10x its float kernel (MobileNetV3's HARD_SWISH: 20
# ops, ~20 ms of a 448x448 mobile-preset invoke on 2 x86 cores, against ~1 ms in float).
INT8_FLOAT_OPS = ("HARD_SWISH",)


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
        notes = {}
        data = convert_tflite(saved, quantize, calibration, options.input_dtype, notes=notes)
        if quantize == "int8":
            meta["int8_kept_float"] = notes["xnnpack_rejected"]
        ops = check_builtin_ops(data)
        meta["ops"] = sorted(set(ops))
        write_pair(dest, data, meta)
    return file_result(dest, "tflite", quantize, meta, ops)


def convert_tflite(saved_model_dir, quantize="none", calibration=None, input_dtype="uint8",
                   float_scopes=INT8_FLOAT_SCOPES, float_ops=INT8_FLOAT_OPS, notes=None) -> bytes:
    """SavedModel (``serving_default``) -> TFLite flatbuffer with builtin ops only.

    Args:
        quantize: none (fp32) | fp16 (fp16 weights) | dynamic (int8 weights, float
            activations) | int8 (see below).
        calibration: int8 only: canvases (N, H, W, 3) 0-255.
        input_dtype: the graph's input dtype, for the calibration samples.
        float_scopes: int8 only: Keras layers kept in float, as name scopes of the graph's
            ops (a layer's name, or ``model/layer``); every op computed from their outputs
            stays float too.
        float_ops: int8 only: TFLite op types kept in float wherever they are.
        notes: a dict to fill, int8 only: ``xnnpack_rejected``, the names of the ops kept in
            float because XNNPack could not prepare them in int8.

    int8 quantizes the weights and activations of every op upstream of ``float_scopes``
    (the network: backbone, pyramid, heads, mask feature; the stem and the normalisation
    before it stay float, :func:`int8_float_nodes`), calibrated on ``calibration``, and keeps
    the decoder in float: its scores, IoUs and Matrix NMS decay need more than 8 bits, and
    the converter's int8 rewrite of its pad / maximum (local max) breaks the same-scale rule
    and fails. The graph thus turns float once, where the raw head outputs enter the
    decoder, apart from the ``float_ops`` islands (:data:`INT8_FLOAT_OPS`); float round
    trips the quantizer leaves in the decoder are removed (:func:`_drop_float_round_trips`).
    An int8 op that LiteRT's XNNPack delegate accepts but cannot
    prepare is kept in float too (:func:`xnnpack_rejected_ops`): a convolution whose
    calibrated output range is tiny next to its input's (requantization scale >= 256, e.g.
    a head conv fed a feature sharing its int8 scale with the [-1, 1] coordinate channels)
    failed there at the first invoke (``failed to create XNNPACK runtime``; earlier LiteRT
    builds aborted with a double free), while the builtin kernels run it.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # then _float_where_xnnpack_declines
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
            data, rejected = _quantize_int8(data, float_scopes, float_ops)
            if notes is not None:
                notes["xnnpack_rejected"] = rejected
        elif quantize == "dynamic":
            data = _float_where_xnnpack_declines(data)
        return data
    except ExportError:
        raise
    except Exception as e:  # ConverterError lists the ops that are not builtins
        raise ExportError(f"TFLite conversion with builtin ops only failed: {_converter_summary(e)}") from e


def _quantize_int8(calibrated: bytes, float_scopes, float_ops, attempts=3):
    """The calibrated float flatbuffer -> (int8 flatbuffer, names of the ops XNNPack
    rejected in int8): the ops :func:`int8_float_nodes` names are left in float, and any
    int8 op XNNPack rejects (:func:`xnnpack_rejected_ops`) too."""
    from tensorflow.lite.python import convert as tflite_convert

    float_nodes = int8_float_nodes(calibrated, float_scopes, float_ops)
    ops = _graph_ops(calibrated)
    # The quantizer quantizes some denylisted nodes anyway (the decoder's TOPK_V2 follows the
    # scale of its input): op types found only among the float nodes are denylisted by type.
    quantized_types = {op[0] for op in ops if not set(op[3]) <= float_nodes}
    float_types = sorted({op[0] for op in ops if set(op[3]) <= float_nodes} - quantized_types)
    kept = set()
    for _ in range(attempts):
        data = quiet(tflite_convert.mlir_quantize, calibrated, disable_per_channel=False, fully_quantize=False,
                     denylisted_nodes=sorted(float_nodes), denylisted_ops=float_types)
        data = _drop_float_round_trips(data)
        rejected = set(xnnpack_rejected_ops(data)) - float_nodes
        if not rejected:
            return data, sorted(kept)
        float_nodes |= rejected
        kept |= rejected
    raise ExportError(f"int8: LiteRT's XNNPack delegate still rejects {', '.join(sorted(rejected))}")


def _drop_float_round_trips(data: bytes) -> bytes:
    """Remove QUANTIZE (-> QUANTIZE ...) -> DEQUANTIZE chains that take a float tensor to
    int8 and straight back: the quantizer leaves such round trips in the float decoder
    (on its first category sigmoid, rounding the scores to 1/256 before the top-k that
    picks the candidates, and on a product of the maskness). Their readers read the float
    tensor itself."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    quantize, dequantize = schema.BuiltinOperator.QUANTIZE, schema.BuiltinOperator.DEQUANTIZE
    producer = {t: op for op in graph.operators for t in op.outputs}
    readers = {}
    for op in graph.operators:
        for t in op.inputs:
            readers.setdefault(t, []).append(op)
    replace, chains = {}, []
    for op in graph.operators:
        if codes[op.opcodeIndex] != dequantize:
            continue
        chain, q = [op], producer.get(op.inputs[0])
        while q is not None and codes[q.opcodeIndex] == quantize:
            chain.append(q)
            if graph.tensors[q.inputs[0]].type == schema.TensorType.FLOAT32:
                replace[op.outputs[0]] = q.inputs[0]
                chains.append(chain)
                break
            q = producer.get(q.inputs[0])
    if not replace or any(t in replace for t in graph.outputs):
        return data
    dropped = set()
    for chain in chains:  # a quantize goes when every reader of its output goes too
        dropped.add(id(chain[0]))
        for q in chain[1:]:
            if all(id(r) in dropped for r in readers.get(q.outputs[0], [])):
                dropped.add(id(q))
    graph.operators = [op for op in graph.operators if id(op) not in dropped]
    for op in graph.operators:
        op.inputs = [replace.get(t, t) for t in op.inputs]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _float_where_xnnpack_declines(data: bytes) -> bytes:
    """A dynamic-range flatbuffer with the int8 weights of every op that LiteRT's XNNPack
    delegate does not run with int8 weights turned back into float32 (their exact
    dequantized values), so XNNPack runs it in float instead of the builtin hybrid kernel:
    DEPTHWISE_CONV_2D in LiteRT 2.3 (12 of MobileNetV3's 15 depthwise convs, ~13 ms of the
    mobile preset's dynamic invoke against ~1 ms in float). Each op is tried as a one-op
    model; the file grows by those weights only (small for depthwise convs)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    int8, float32 = schema.TensorType.INT8, schema.TensorType.FLOAT32

    def constant(t):
        buf = model.buffers[graph.tensors[t].buffer]
        return buf.data is not None and len(buf.data) > 0

    changed = False
    for i, op in enumerate(graph.operators):
        weights = [t for t in op.inputs if t >= 0 and graph.tensors[t].type == int8 and constant(t)]
        if not weights or not any(t >= 0 and graph.tensors[t].type == float32 for t in op.outputs):
            continue
        interp = Interpreter(model_content=subgraph_model(model, [i]), num_threads=1)
        interp.allocate_tensors()
        if any(d["op_name"] == "DELEGATE" for d in interp._get_ops_details()):
            continue
        for t in weights:
            tensor = graph.tensors[t]
            q = tensor.quantization
            values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8).reshape(tensor.shape)
            scale = np.asarray(q.scale, np.float32)
            zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float32)
            shape = [1] * values.ndim
            if scale.size > 1:
                shape[q.quantizedDimension] = scale.size
            real = ((values.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(real.tobytes(), np.uint8)
            model.buffers.append(buffer)
            tensor.buffer, tensor.type, tensor.quantization = len(model.buffers) - 1, float32, None
            changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else data


def _graph_ops(data: bytes):
    """Subgraph 0 of a flatbuffer: one (op type, input tensor ids, output tensor ids, output
    tensor names, input tensor shapes) per op, in execution order (the quantizer knows an op
    by its outputs' names)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode())), "?")
        ins = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
        shapes = [tuple(int(v) for v in graph.Tensors(t).ShapeAsNumpy()) if t >= 0 and graph.Tensors(t).ShapeLength()
                  else () for t in ins]
        out.append((kind, ins, outs, [graph.Tensors(t).Name().decode() for t in outs], shapes))
    return out


def int8_float_nodes(data: bytes, float_scopes=INT8_FLOAT_SCOPES, float_ops=INT8_FLOAT_OPS) -> set:
    """Names (outputs) of the ops of a calibrated float flatbuffer that int8 keeps in
    float: the ops under ``float_scopes``, every op computed from their outputs, the ops of
    types ``float_ops``, and the stem: the first convolution when it reads the 3 image
    channels, with everything it is computed from (the input cast and normalisation).

    An int8 stem is slower than a float one with LiteRT's XNNPack on x86 (MobileNetV3's
    3x3/2 conv on 448x448: 1.2 against 0.4 ms; ResNet-18's 7x7/2: no faster), and float
    there keeps the image at full precision; its output is quantized once.

    Raises:
        ExportError: nothing would be quantized (no op upstream of ``float_scopes``)."""
    ops = _graph_ops(data)
    downstream, floats = set(), set()
    stem = next((i for i, op in enumerate(ops) if op[0] == "CONV_2D"), None)
    if stem is not None and len(ops[stem][4]) > 1 and ops[stem][4][1][-1:] in ((1,), (3,), (4,)):
        needed = set(ops[stem][1])
        for i in range(stem, -1, -1):
            kind, ins, outs, names, _ = ops[i]
            if i == stem or needed & set(outs):
                needed.update(ins)
                floats.update(names)
    kept = 0
    for kind, ins, outs, names, _ in ops:
        after_float = any(t in downstream for t in ins)
        if after_float or any(_in_scope(n, scope) for n in names for scope in float_scopes):
            downstream.update(outs)
            floats.update(names)
        elif kind in float_ops or floats.issuperset(names):
            floats.update(names)
        else:
            kept += 1
    if not kept:
        raise ExportError(f"int8: every op lies under or after {', '.join(float_scopes)}: nothing to quantize")
    return floats


def xnnpack_rejected_ops(data: bytes) -> list:
    """Names (outputs) of the int8 ops of a flatbuffer that LiteRT's XNNPack delegate
    takes but fails to prepare, each tried as a one-op model (``failed to create XNNPACK
    runtime``: XNNPack's own limits on quantization parameters, e.g. a convolution's
    input scale x weight scale / output scale must stay below 256)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    int8 = 9  # TensorType.INT8
    rejected = []
    for i, op in enumerate(graph.operators):
        if not any(t >= 0 and graph.tensors[t].type == int8 for t in list(op.inputs) + list(op.outputs)):
            continue
        try:
            Interpreter(model_content=subgraph_model(model, [i]), num_threads=1).allocate_tensors()
        except (RuntimeError, ValueError):
            rejected += [graph.tensors[t].name.decode() for t in op.outputs if t >= 0]
    return rejected


def subgraph_model(model, op_indices) -> bytes:
    """A flatbuffer of some ops of subgraph 0 of ``model`` (a ``ModelT``) alone: its inputs
    are the non-constant tensors they read and do not write, its outputs what they write
    that other ops (or the graph's outputs) read. Tensors and buffers are compacted,
    signatures dropped. For op-level checks and profiling (benchmarks/profile_tflite.py)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    graph = model.subgraphs[0]
    chosen = [graph.operators[i] for i in sorted(op_indices)]
    chosen_ids = {id(op) for op in chosen}
    produced = {t for op in chosen for t in op.outputs if t >= 0}

    def constant(t):
        buf = model.buffers[graph.tensors[t].buffer]
        return buf.data is not None and len(buf.data) > 0

    reads = [t for op in chosen for t in op.inputs if t >= 0]
    inputs = list(dict.fromkeys(t for t in reads if t not in produced and not constant(t)))
    read_elsewhere = {t for op in graph.operators if id(op) not in chosen_ids for t in op.inputs if t >= 0}
    read_elsewhere |= {int(t) for t in graph.outputs}
    outputs = [t for op in chosen for t in op.outputs if t >= 0 and t in read_elsewhere] or [chosen[-1].outputs[0]]

    new = schema.ModelT()
    new.version, new.operatorCodes, new.description = model.version, model.operatorCodes, model.description
    new.buffers = [schema.BufferT()]
    sub = schema.SubGraphT()
    sub.tensors, sub.operators, sub.name = [], [], graph.name
    tensor_map, buffer_map = {}, {0: 0}

    def remap(t):
        if t < 0:
            return t
        if t not in tensor_map:
            src = graph.tensors[t]
            copy = schema.TensorT()
            copy.__dict__.update(src.__dict__)
            if src.buffer not in buffer_map:
                buffer_map[src.buffer] = len(new.buffers)
                new.buffers.append(model.buffers[src.buffer])
            copy.buffer = buffer_map[src.buffer]
            tensor_map[t] = len(sub.tensors)
            sub.tensors.append(copy)
        return tensor_map[t]

    for op in chosen:
        copy = schema.OperatorT()
        copy.__dict__.update(op.__dict__)
        copy.inputs = [remap(t) for t in op.inputs]
        copy.outputs = [remap(t) for t in op.outputs]
        if op.intermediates is not None:
            copy.intermediates = [remap(t) for t in op.intermediates]
        sub.operators.append(copy)
    sub.inputs = [remap(t) for t in inputs]
    sub.outputs = [remap(t) for t in outputs]
    new.subgraphs, new.signatureDefs, new.metadata, new.metadataBuffer = [sub], [], [], []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(new))


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
