"""Where a ``.tflite`` file's time goes, op by op and per op group, in LiteRT (2 threads).

LiteRT's Python interpreter has no op profiler, so this does what ``benchmark_model
--enable_op_profiling`` does from Python by running sub-graphs: the flatbuffer is cut into

* one model per op (its inputs fed with the values the full graph computes there), and
* one model per op group (every op of a group together, so XNNPack fuses and partitions as
  in the full graph),

each timed on its own with the interpreter and threads the file is deployed with. Groups
come from the Keras layer scopes in the tensor names: ``backbone`` (normalisation +
backbone), ``fpn``, ``heads``, ``mask_feature``, ``decoder`` (+ the exported outputs), and
``q/dq`` for the QUANTIZE / DEQUANTIZE ops the quantiser puts at int8/float boundaries.

    python benchmarks/profile_tflite.py model.tflite [other.tflite ...] [--top 15]

Prints, per file: the end-to-end time, each group's time as a sub-graph and as the sum of
its ops, the op types per group, and the slowest ops. Times: the fastest of ``--repeats``
invokes (ms wall); the machine's load is printed first.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

THREADS = 2
GROUPS = ("backbone", "fpn", "heads", "mask_feature", "decoder", "q/dq", "other")
_SCOPES = (("mask_feature_head", "mask_feature"), ("backbone", "backbone"), ("normalize", "backbone"),
           ("fpn", "fpn"), ("decoder", "decoder"), ("head", "heads"))


def _builtin_names():
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def read(data: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def op_name(model, op, names=None):
    names = names or _builtin_names()
    code = model.operatorCodes[op.opcodeIndex]
    return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")


def group_of(model, op, names=None) -> str:
    """The op group of one op: by the Keras scopes in its outputs' names (fused names are
    joined by ';'); the exported outputs (``StatefulPartitionedCall``) count as decoder."""
    kind = op_name(model, op, names)
    if kind in ("QUANTIZE", "DEQUANTIZE"):
        return "q/dq"
    graph = model.subgraphs[0]
    text = ";".join(graph.tensors[t].name.decode() for t in op.outputs)
    parts = [p.split("/") for p in text.split(";")]
    for scope, group in _SCOPES:
        for levels in parts:
            if any(level == scope or level.startswith(scope + "_") for level in levels[:4]):
                return group
    if "StatefulPartitionedCall" in text or text.startswith("Cast"):
        return "decoder" if "StatefulPartitionedCall" in text else "backbone"
    return "other"


def _is_constant(model, tensor) -> bool:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buf is not None and buf.data is not None and len(buf.data) > 0


def slice_model(model, op_indices) -> bytes:
    """The ops ``op_indices`` alone as a flatbuffer (:func:`solo_tf.export.tflite.subgraph_model`)."""
    from solo_tf.export.tflite import subgraph_model

    return subgraph_model(model, op_indices)


def all_values(data: bytes, feed: np.ndarray):
    """Every tensor's value (by index) of one invoke of the full graph on ``feed``
    (reference kernels, every intermediate kept)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=data, num_threads=THREADS, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], feed)
    interp.invoke()
    values = {}
    for d in interp.get_tensor_details():
        try:
            values[d["index"]] = np.array(interp.get_tensor(d["index"]))
        except ValueError:  # a tensor with no data (optional / freed)
            pass
    return values


def delegated(interp) -> bool:
    """True when XNNPack took at least one node of an (allocated) interpreter's graph."""
    return any(d["op_name"] == "DELEGATE" for d in interp._get_ops_details())


def time_model(data: bytes, feeds, repeats=5, warmup=1, with_delegation=False):
    """Fastest invoke (ms) of a flatbuffer fed ``feeds`` (by its inputs' order); with
    ``with_delegation`` also whether XNNPack took any of its nodes."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=THREADS)
    interp.allocate_tensors()
    for detail, value in zip(interp.get_input_details(), feeds):
        interp.set_tensor(detail["index"], np.asarray(value, detail["dtype"]).reshape(detail["shape"]))
    for _ in range(warmup):
        interp.invoke()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        interp.invoke()
        best = min(best, time.perf_counter() - start)
    return (best * 1000, delegated(interp)) if with_delegation else best * 1000


def _feeds(model, op_indices, values):
    graph = model.subgraphs[0]
    chosen = [graph.operators[i] for i in sorted(op_indices)]
    produced = {t for op in chosen for t in op.outputs if t >= 0}
    ins = [t for op in chosen for t in op.inputs if t >= 0]
    ins = list(dict.fromkeys(t for t in ins if t not in produced and not _is_constant(model, graph.tensors[t])))
    return [values[t] for t in ins]


def profile(data: bytes, repeats=5, per_op=True):
    """dict ``total`` (ms, the whole file), ``groups`` {group: ms as one sub-graph},
    ``ops`` [(ms, index, op type (+ ``*`` where XNNPack does not run it), group, output
    name)] (per_op), ``counts``
    {group: Counter of op types}."""
    model = read(data)
    names = _builtin_names()
    graph = model.subgraphs[0]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=THREADS)
    detail = interp.get_input_details()[0]
    feed = np.random.RandomState(0).randint(0, 255, detail["shape"]).astype(detail["dtype"])
    values = all_values(data, feed)
    total = time_model(data, [feed], repeats)
    by_group = collections.defaultdict(list)
    counts = collections.defaultdict(collections.Counter)
    for i, op in enumerate(graph.operators):
        g = group_of(model, op, names)
        by_group[g].append(i)
        counts[g][op_name(model, op, names)] += 1
    groups = {}
    for g in GROUPS:
        if by_group.get(g):
            groups[g] = time_model(slice_model(model, by_group[g]), _feeds(model, by_group[g], values), repeats)
    ops = []
    if per_op:
        for i, op in enumerate(graph.operators):
            ms, xnn = time_model(slice_model(model, [i]), _feeds(model, [i], values), max(3, repeats // 2),
                                 with_delegation=True)
            ops.append((ms, i, op_name(model, op, names) + ("" if xnn else "*"), group_of(model, op, names),
                        graph.tensors[op.outputs[0]].name.decode()))
    return {"total": total, "groups": groups, "ops": ops, "counts": counts}


def report(label, result, top=15, group=None):
    print(f"\n== {label}: end to end {result['total']:.1f} ms (LiteRT, {THREADS} threads)")
    per_op = collections.defaultdict(float)
    per_type = collections.defaultdict(lambda: collections.defaultdict(float))
    for ms, _, kind, g, _ in result["ops"]:
        per_op[g] += ms
        per_type[g][kind] += ms
        result["counts"][g].setdefault(kind, sum(1 for o in result["ops"] if o[2] == kind and o[3] == g))
    print(f"{'group':<14} {'sub-graph ms':>12} {'sum of ops ms':>14}  op types (ms summed per type, top 5; "
          "* = not run by XNNPack)")
    for g in GROUPS:
        if g not in result["groups"]:
            continue
        kinds = sorted(per_type[g].items(), key=lambda kv: -kv[1])[:5]
        mix = ", ".join(f"{k} x{result['counts'][g][k]} {v:.1f}" for k, v in kinds) if kinds else \
            ", ".join(f"{k} x{n}" for k, n in result["counts"][g].most_common(5))
        print(f"{g:<14} {result['groups'][g]:>12.2f} {per_op.get(g, float('nan')):>14.2f}  {mix}")
    if result["ops"]:
        print(f"slowest ops{'' if group is None else ' of ' + group}:")
        ops = [o for o in result["ops"] if group is None or o[3] == group]
        for ms, i, kind, g, name in sorted(ops, reverse=True)[:top]:
            print(f"  {ms:7.2f} ms  #{i:<4} {kind:<18} {g:<12} {name[:90]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--groups-only", action="store_true", help="skip the per-op models")
    p.add_argument("--group", choices=GROUPS, help="list the slowest ops of this group only")
    args = p.parse_args()
    print(f"cpus={os.cpu_count()} threads={THREADS} load1={os.getloadavg()[0]:.1f}")
    for f in args.files:
        report(f, profile(Path(f).read_bytes(), args.repeats, per_op=not args.groups_only), args.top, args.group)


if __name__ == "__main__":
    main()
