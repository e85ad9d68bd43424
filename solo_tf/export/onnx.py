"""The ``onnx`` format: the fixed-canvas graph with a dynamic batch, through tf2onnx.

``images`` (B, H, W, 3) uint8 (or float32, ``input_dtype``) already letterboxed (top-left,
zero padding), detections in canvas pixels: the graph of the TFLite format, converted from
the fixed-canvas SavedModel (:func:`solo_tf.export.saved_model.write_canvas_saved_model`).
The description is in the file's metadata (``solo_export``) and in a side file ``OUT.json``.

tf2onnx writes the channels-last TensorFlow graph with a Transpose around every ONNX (NCHW)
convolution; its transpose optimizer removes most, and the file is then rewritten for ONNX
Runtime (:func:`optimize_for_ort`): hard-swish / hard-sigmoid patterns become ``HardSwish``
/ ``HardSigmoid`` nodes, ORT's basic (standard-ONNX, provider-independent) optimizations
are saved into the file, which pushes the remaining transposes out of the way, and the
spatial means left in NCHW become ``GlobalAveragePool``. ORT fuses those with the
convolutions in its blocked (NCHWc) layout instead of converting the layout back and forth
around each one.
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
        proto = optimize_for_ort(proto)
        meta["outputs_onnx"] = [o.name for o in proto.graph.output]
        entry = proto.metadata_props.add()
        entry.key, entry.value = "solo_export", json.dumps(meta)
        write_pair(dest, proto.SerializeToString(), meta)
    return file_result(dest, "onnx", "none", meta)


def optimize_for_ort(proto):
    """tf2onnx's model -> the same function with fewer layout conversions in ONNX Runtime
    (see the module doc); standard ONNX ops only. Without onnxruntime installed, only the
    activation and mean rewrites are made."""
    _fuse_hard_activations(proto)
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        proto = _ort_basic(proto, ort)
    _global_pools(proto)
    _transpose_input_first(proto)
    _fold_transposed_reshapes(proto)
    _drop_unused_initializers(proto)
    return proto


def _ort_basic(proto, ort):
    """``proto`` through ONNX Runtime's basic graph optimizations (constant folding,
    redundant nodes, transposes pushed and cancelled; standard ONNX ops), read back."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(proto.SerializeToString())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(dst)
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # its notes on the initializers the rewrites left unused
        quiet(ort.InferenceSession, str(src), options, providers=["CPUExecutionProvider"])
        out = onnx.load(str(dst))
    # keep the opset imports the graph uses (ORT lists every domain it knows)
    used = {n.domain for n in out.graph.node}
    keep = [o for o in out.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def _graph_index(graph):
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consts, producer, consumers


def _scalar(consts, name, value):
    v = consts.get(name)
    return v is not None and v.size == 1 and abs(float(v.reshape(())) - value) < 1e-6


def _fuse_hard_activations(proto):
    """``x * relu6(x + 3) / 6`` (tf2onnx: Add, Clip, Mul, Mul) -> ``HardSwish(x)``, and
    ``relu6(x + 3) / 6`` -> ``HardSigmoid(x, 1/6, 0.5)`` (MobileNetV3): one node ORT fuses
    into the convolution before it instead of four it runs in NCHW between layout
    conversions. Returns the number of each replaced."""
    from onnx import helper

    graph = proto.graph
    consts, producer, consumers = _graph_index(graph)
    removed, added, counts = set(), {}, {"HardSwish": 0, "HardSigmoid": 0}
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        sixth = [i for i in mul.input if _scalar(consts, i, 1 / 6)]
        rest = [i for i in mul.input if not sixth or i != sixth[0]]
        clip = producer.get(rest[0]) if sixth and len(rest) == 1 else None
        if clip is None or clip.op_type != "Clip" or len(clip.input) < 3 or not (
                _scalar(consts, clip.input[1], 0.0) and _scalar(consts, clip.input[2], 6.0)):
            continue
        add = producer.get(clip.input[0])
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            continue
        xs = [i for i in add.input if not _scalar(consts, i, 3.0)]
        if len(xs) != 1 or len(consumers.get(add.output[0], ())) != 1 or len(consumers.get(clip.output[0], ())) != 1:
            continue
        x = xs[0]
        users = consumers.get(mul.output[0], [])
        if len(users) == 1 and users[0].op_type == "Mul" and sorted(users[0].input) == sorted([x, mul.output[0]]):
            outer = users[0]
            added[id(outer)] = helper.make_node("HardSwish", [x], [outer.output[0]], name=outer.name + "/HardSwish")
            removed.update(id(n) for n in (add, clip, mul))
            counts["HardSwish"] += 1
        else:
            added[id(mul)] = helper.make_node("HardSigmoid", [x], [mul.output[0]], name=mul.name + "/HardSigmoid",
                                              alpha=1 / 6, beta=0.5)
            removed.update(id(n) for n in (add, clip))
            counts["HardSigmoid"] += 1
    # each new node takes the place of the last node it replaces (its inputs come earlier)
    nodes = [added.get(id(n), n) for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    return counts


def _global_pools(proto):
    """``ReduceMean`` over axes (2, 3) of a 4-D (NCHW) tensor -> ``GlobalAveragePool`` (+
    ``Squeeze`` when the means drop those axes): the pooling kernel ORT runs in its blocked
    layout, where a ReduceMean makes it convert the whole feature map back to NCHW.
    Returns the number replaced."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    rank = {}
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            rank[v.name] = len(v.type.tensor_type.shape.dim)
    producer = {o: n for n in graph.node for o in n.output}
    nodes, count = [], 0
    for n in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        src = producer.get(n.input[0]) if n.input else None
        four_d = rank.get(n.input[0]) == 4 or (src is not None and src.op_type in ("Conv", "Relu", "Add", "Mul", "Sub"))
        if (n.op_type != "ReduceMean" or len(n.input) != 1 or sorted(attrs.get("axes", [])) != [2, 3]
                or not four_d):
            nodes.append(n)
            continue
        keep = attrs.get("keepdims", 1)
        pooled = n.output[0] if keep else n.output[0] + "/pooled"
        nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [pooled], name=n.name + "/GlobalAveragePool"))
        if not keep:
            axes = n.name + "/axes"
            graph.initializer.append(numpy_helper.from_array(np.asarray([2, 3], np.int64), axes))
            nodes.append(helper.make_node("Squeeze", [pooled, axes], [n.output[0]], name=n.name + "/Squeeze"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _fold_transposed_reshapes(proto):
    """Transpose -> Reshape -> Transpose chains that move no element (their composition is
    a reshape) -> one Reshape. The decoder pools its masks as channels, (B, n, h*w) ->
    (B, h, w, n), the layout LiteRT pools fastest; in ONNX's NCHW that is the (B, n, h, w)
    it started from, and the two transposes moved 500 x 112 x 192 floats for nothing in the
    light models (~15 ms in ORT). Batch axis kept in place and dynamic; the other axes
    static. Returns the number folded."""
    import numpy as np
    from onnx import helper, numpy_helper, shape_inference

    graph = proto.graph
    inferred = shape_inference.infer_shapes(proto).graph
    shapes = {}
    for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    consts, producer, consumers = _graph_index(graph)

    def perm(n):
        return [list(a.ints) for a in n.attribute if a.name == "perm"][0]

    folded, removed, replaced = 0, set(), {}
    for last in graph.node:
        if last.op_type != "Transpose":
            continue
        mid = producer.get(last.input[0])
        first = producer.get(mid.input[0]) if mid is not None and mid.op_type == "Reshape" else None
        if first is None or first.op_type != "Transpose" or mid.input[1] not in consts:
            continue
        if len(consumers.get(first.output[0], ())) != 1 or len(consumers.get(mid.output[0], ())) != 1:
            continue
        src = shapes.get(first.input[0])
        target = [int(v) for v in consts[mid.input[1]]]
        p1, p2 = perm(first), perm(last)
        if not src or None in src[1:] or p1[0] != 0 or p2[0] != 0 or target[0] not in (0, -1) or min(target[1:]) <= 0:
            continue
        probe = np.arange(int(np.prod(src[1:]))).reshape([1, *src[1:]])
        out = np.transpose(np.transpose(probe, p1).reshape([1, *target[1:]]), p2)
        if not np.array_equal(out.reshape(-1), probe.reshape(-1)):
            continue
        name = last.name + "/folded_shape"
        graph.initializer.append(numpy_helper.from_array(np.asarray([0, *out.shape[1:]], np.int64), name))
        replaced[id(last)] = helper.make_node("Reshape", [first.input[0], name], [last.output[0]],
                                              name=last.name + "/folded")
        removed.update((id(first), id(mid)))
        folded += 1
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    return folded


def _drop_unused_initializers(proto):
    graph = proto.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _transpose_input_first(proto):
    """The image's normalisation (Cast, Sub, Mul with per-channel constants) moved after
    the NHWC -> NCHW Transpose that tf2onnx puts before the first convolution: ORT's
    elementwise kernels broadcast a (1, 3, 1, 1) constant over whole planes but a
    trailing (3,) one element by element (~2 ms of the mobile preset at 448x448), and the
    transpose then moves the uint8 image instead of its float copy. Returns True when
    rewritten."""
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    consts, producer, consumers = _graph_index(graph)
    inputs = {i.name for i in graph.input}
    for t in graph.node:
        perm = [a.ints for a in t.attribute if a.name == "perm"]
        if t.op_type != "Transpose" or not perm or list(perm[0]) != [0, 3, 1, 2]:
            continue
        chain, name = [], t.input[0]
        while name not in inputs:
            n = producer.get(name)
            if n is None or n.op_type not in ("Cast", "Sub", "Mul", "Add", "Div") or len(consumers.get(name, ())) != 1:
                return False
            others = [i for i in n.input[1:]] if n.op_type != "Cast" else []
            if n.op_type != "Cast" and (n.input[0] in consts or any(i not in consts or consts[i].size not in (1, 3)
                                                                     for i in others)):
                return False
            chain.append(n)
            name = n.input[0]
        if not chain:
            return False
        chain.reverse()  # from the input to the transpose
        moved = t.output[0] + "/moved_input"
        t.input[0], t.output[0], old_out = name, moved, t.output[0]
        previous = moved
        for n in chain:
            for k, c in enumerate(n.input[1:], start=1):
                value = consts[c]
                if value.size == 3:
                    new = c + "/nchw"
                    graph.initializer.append(numpy_helper.from_array(np.asarray(value).reshape(1, 3, 1, 1), new))
                    n.input[k] = new
            n.input[0] = previous
            previous = n.output[0]
        # the last op of the chain now produces what the transpose produced
        for user in consumers.get(old_out, []):
            for k, i in enumerate(user.input):
                if i == old_out:
                    user.input[k] = previous
        for o in graph.output:
            if o.name == old_out:
                return False
        # order: transpose first, then the chain, where the chain's first node was
        nodes = [n for n in graph.node if n is not t]
        first = min(nodes.index(n) for n in chain)
        nodes.insert(first, t)
        del graph.node[:]
        graph.node.extend(nodes)
        return True
    return False


def _write(request):
    opset = DEFAULT_OPSET if request.opset is None else request.opset
    return write_onnx(request.model, request.out, request.options, opset=opset, overwrite=request.overwrite)


register_format("onnx", _write, title="ONNX", suffix=".onnx",
                help="ONNX Runtime, fixed canvas, dynamic batch (--opset)")
