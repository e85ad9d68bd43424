"""Where a ``.onnx`` file's time goes in ONNX Runtime, per node, with ORT's own profiler.

One session at a time, ``THREADS`` intra-op threads, thread spinning off (idle sessions'
spinning threads otherwise steal the cores). The file is profiled as ORT runs it (after its
graph optimizations); each node's kernel time is summed over ``--repeats`` runs after
warm-up and reported per op group (the Keras scopes in the node names, as
benchmarks/profile_tflite.py groups TFLite ops) and per op type, with the node counts of
the file itself (Transpose, Cast, Shape, ...).

    python benchmarks/profile_onnx.py model.onnx [other.onnx ...] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2
GROUPS = ("backbone", "fpn", "heads", "mask_feature", "decoder", "layout", "other")
_SCOPES = (("mask_feature_head", "mask_feature"), ("backbone", "backbone"), ("normalize", "backbone"),
           ("fpn", "fpn"), ("decoder", "decoder"), ("head", "heads"))


def session_options(profile_dir=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort")
    return options


def feed_for(sess):
    inp = sess.get_inputs()[0]
    dtype = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}[inp.type]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    return {inp.name: np.random.RandomState(0).randint(0, 255, shape).astype(dtype)}


def group_of(name: str, op_type: str) -> str:
    """A node's op group from the Keras scopes in its name; transposes that tf2onnx or ORT
    added for layout (no Keras scope of their own, or ORT's ``Transpose``/``Reorder``
    nodes) count as ``layout``."""
    if op_type in ("Transpose", "ReorderInput", "ReorderOutput"):
        return "layout"
    parts = name.replace(":", "/").split("/")
    for scope, group in _SCOPES:
        if any(p == scope or p.startswith(scope + "_") for p in parts[:4]):
            return group
    return "other"


def node_counts(path) -> collections.Counter:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node)


def profile(path, repeats=10):
    """dict ``total`` (ms, fastest run), ``nodes`` {(name, op type): ms per run summed over
    the profiled runs / repeats}."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        sess = ort.InferenceSession(str(path), session_options(tmp), providers=["CPUExecutionProvider"])
        feed = feed_for(sess)
        for _ in range(2):
            sess.run(None, feed)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            sess.run(None, feed)
            best = min(best, time.perf_counter() - start)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    nodes = collections.defaultdict(float)
    runs = 0
    for event in trace:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs += 1
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            args = event.get("args", {})
            nodes[(event["name"][: -len("_kernel_time")], args.get("op_name", "?"))] += event["dur"] / 1000.0
    runs = max(runs, 1)
    return {"total": best * 1000, "nodes": {k: v / runs for k, v in nodes.items()}}


def report(path, result, top=15, group=None):
    counts = node_counts(path)
    print(f"\n== {path}: fastest run {result['total']:.1f} ms (ORT, {THREADS} threads, spinning off); "
          f"{sum(counts.values())} nodes in the file: " + ", ".join(f"{k} {v}" for k, v in counts.most_common(6)))
    by_group = collections.defaultdict(float)
    by_type = collections.defaultdict(lambda: collections.defaultdict(float))
    n_run = collections.Counter()
    for (name, kind), ms in result["nodes"].items():
        g = group_of(name, kind)
        by_group[g] += ms
        by_type[g][kind] += ms
        n_run[kind] += 1
    total = sum(by_group.values())
    print(f"kernel time {total:.1f} ms per run over {len(result['nodes'])} executed nodes "
          f"({', '.join(f'{k} {v}' for k, v in n_run.most_common(5))})")
    print(f"{'group':<14} {'ms':>8}  op types (ms, top 5)")
    for g in GROUPS:
        if g in by_group:
            kinds = sorted(by_type[g].items(), key=lambda kv: -kv[1])[:5]
            print(f"{g:<14} {by_group[g]:>8.2f}  " + ", ".join(f"{k} {v:.2f}" for k, v in kinds))
    print(f"slowest nodes{'' if group is None else ' of ' + group}:")
    nodes = [kv for kv in result["nodes"].items() if group is None or group_of(kv[0][0], kv[0][1]) == group]
    for (name, kind), ms in sorted(nodes, key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:7.2f} ms  {kind:<18} {group_of(name, kind):<12} {name[:90]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--group", choices=GROUPS, help="list the slowest nodes of this group only")
    args = p.parse_args()
    print(f"cpus={os.cpu_count()} threads={THREADS} load1={os.getloadavg()[0]:.1f}")
    for f in args.files:  # one session at a time
        report(f, profile(f, args.repeats), args.top, args.group)


if __name__ == "__main__":
    sys.exit(main())
