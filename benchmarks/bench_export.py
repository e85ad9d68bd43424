"""Exported-model size and latency per preset, format and quantisation, side by side in one
run: LiteRT (2 threads), ONNX Runtime (2 threads, spinning off, one session at a time) and
SavedModel, and where the time goes.

Untrained weights from one seed (the graphs have static shapes: the decoder does the same
work whatever the scores), with each backbone BatchNorm's statistics taken from the
calibration images, so that activations have a trained network's ranges (int8 kernels
depend on them). Batch 1 on the preset's canvas or another (``name@HxW``). Every
file is exported first, then all are invoked in turn, one invoke each per round, ``--rounds``
times, so that the load of a shared machine falls on all of them; printed: the fastest and the
median wall ms, the median CPU ms of the process (all threads), and the median against LiteRT
fp32. The load average is printed with each table.

    python benchmarks/bench_export.py                                   # the mobile preset
    python benchmarks/bench_export.py --configs solov2_light_r18@448x768 solov2_light_r50@448x768
    python benchmarks/bench_export.py --ref c2efd02 --profile           # before / after, op groups
    python benchmarks/bench_export.py --sweep                           # head / decoder design points
    python benchmarks/bench_export.py --tiny                            # per variant: formats, parity
    python benchmarks/bench_export.py --trained solo_demo/model.keras     # quantised vs fp32 masks

``--ref COMMIT`` exports the same model with that commit's code too (a temporary git
worktree) and times its files beside this tree's. ``--profile`` adds each op group's time
(backbone, fpn, heads, mask_feature, decoder, q/dq) in the LiteRT fp32 and int8 files, as
the sum of their ops timed one by one (benchmarks/profile_tflite.py), with the pyramid's P2
3x3 conv alone, and ORT's own per-node profile of the ONNX files summed per group
(benchmarks/profile_onnx.py; ``layout``: the transposes and NCHWc reorders); with ``--ref``,
the "before" files too. ``--sweep`` measures the design points the mobile preset was chosen from
(fp32 full graph, LiteRT only).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

THREADS = 2

_NARROW = {"fpn_channels": 32, "head_channels": 32, "mask_feature_channels": 32, "mask_channels": 32,
           "norm_groups": 8, "stacked_convs": 1}
_THREE_LEVELS = {"num_grids": (24, 16, 12), "strides": (8, 16, 32), "scale_ranges": ((1, 64), (32, 192), (96, 2048))}

# Design points for the SOLOv2 mobile head, measured by --sweep (overrides of
# solov2_light_mnv3l_448: the paper's light head on MobileNetV3-Large at 448).
SWEEP = {
    "paper light (256 ch, 5 levels, E=128, nms_pre 500)": {},
    "nms_pre 100, K 50": {"post": {"nms_pre": 100, "max_per_img": 50}},
    "+ FPN/head 64, E=64": {"model": {"fpn_channels": 64, "head_channels": 64, "mask_feature_channels": 64,
                                      "mask_channels": 64, "norm_groups": 16},
                            "post": {"nms_pre": 100, "max_per_img": 50}},
    "+ FPN/head 32, E=32": {"model": {"fpn_channels": 32, "head_channels": 32, "mask_feature_channels": 32,
                                      "mask_channels": 32, "norm_groups": 8},
                            "post": {"nms_pre": 100, "max_per_img": 50}},
    "+ 1 stacked conv": {"model": _NARROW, "post": {"nms_pre": 100, "max_per_img": 50}},
    "+ 3 levels (24, 16, 12)": {"model": {**_NARROW, **_THREE_LEVELS}, "post": {"nms_pre": 100, "max_per_img": 50}},
    "+ E=16, mask feature 16": {"model": {**_NARROW, **_THREE_LEVELS, "mask_feature_channels": 16,
                                          "mask_channels": 16}, "post": {"nms_pre": 100, "max_per_img": 50}},
    "+ nms_pre 50, K 30": {"model": {**_NARROW, **_THREE_LEVELS}, "post": {"nms_pre": 50, "max_per_img": 30}},
    "E=16 + nms_pre 50, K 30": {"model": {**_NARROW, **_THREE_LEVELS, "mask_feature_channels": 16,
                                          "mask_channels": 16}, "post": {"nms_pre": 50, "max_per_img": 30}},
    "+ FPN 16": {"model": {**_NARROW, **_THREE_LEVELS, "fpn_channels": 16, "mask_feature_channels": 16,
                           "mask_channels": 16}, "post": {"nms_pre": 50, "max_per_img": 30}},
}


class Timing:
    """``wall``: the fastest call (ms); ``cpu``: the median CPU time of this process per call
    (ms, all threads). On a shared, loaded machine wall times stretch with the load while
    CPU time stays close to the work done; compare ``cpu`` between rows when the load
    average printed first is above the core count."""

    def __init__(self, wall, cpu):
        self.wall, self.cpu = wall, cpu

    def __format__(self, spec):
        return format(f"{self.wall:.1f} / {self.cpu:.1f}", spec)


def timed(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return Timing(min(walls) * 1000, sorted(cpus)[len(cpus) // 2] * 1000)


def litert_ms(data: bytes, repeats):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=THREADS)
    runner = interpreter.get_signature_runner()
    (name, spec), = runner.get_input_details().items()
    x = np.random.RandomState(0).randint(0, 255, spec["shape"]).astype(spec["dtype"])
    return timed(lambda: runner(**{name: x}), repeats)


def onnx_ms(path, repeats):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.RandomState(0).randint(0, 255, (1, *inp.shape[1:])).astype(np.uint8)
    return timed(lambda: sess.run(None, {inp.name: x}), repeats)


def saved_model_ms(path, canvas, repeats):
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    x = tf.constant(np.random.RandomState(0).randint(0, 255, (1, *canvas, 3)).astype(np.uint8))
    return timed(lambda: serve(images=x), repeats)


def backbone_tflite(model, work):
    """Normalisation + backbone of ``model`` alone, converted as the full graph is."""
    import keras
    import tensorflow as tf

    from solo_tf.export.tflite import convert_tflite

    h, w = model.model_config.image_size
    backbone = model.get_layer("backbone")
    normalize = model.get_layer("normalize")
    archive = keras.export.ExportArchive()
    archive.track(backbone)
    archive.track(normalize)
    archive.add_endpoint("serving_default", lambda x: backbone(normalize(tf.cast(x, tf.float32))),
                         input_signature=[tf.TensorSpec((1, h, w, 3), tf.uint8, name="images")])
    archive.write_out(str(work / "backbone"), verbose=False)
    return convert_tflite(work / "backbone")


def build(name, overrides=None):
    from solo_tf.config import load_config
    from solo_tf.model import SOLO

    cfg = load_config(name)
    overrides = overrides or {}
    model_cfg = dataclasses.replace(cfg.model, **overrides.get("model", {}))
    post = dataclasses.replace(cfg.postprocess, **overrides.get("post", {}))
    model_cfg.validate()
    # score_thr 0 keeps every candidate valid: the static graph costs the same either way,
    # but it makes the ONNX / SavedModel timings include real Matrix NMS work too
    post = dataclasses.replace(post, score_thr=0.0, update_thr=0.0)
    return SOLO(model_cfg, postprocess_config=post), post


# Exports one config's files with whichever solo_tf is first on sys.path (this tree, or an
# earlier commit's worktree for --ref); prints a JSON line {file: path}. The weights come from
# one seed, so both trees export the same network.
EXPORT_DRIVER = r"""
import dataclasses, json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
root, name, canvas, out, quants, formats = sys.argv[1:7]
sys.path.insert(0, root)
import keras
import numpy as np
from solo_tf.config import load_config
from solo_tf.export import export_model
from solo_tf.model import SOLO
canvas = None if canvas == "-" else tuple(int(v) for v in canvas.split("x"))
cfg = load_config(name)
# score_thr 0 keeps every candidate valid: the static graph costs the same either way, but the
# ONNX / SavedModel timings then include real Matrix NMS work too
post = dataclasses.replace(cfg.postprocess, score_thr=0.0, update_thr=0.0)
keras.utils.set_random_seed(0)
model = SOLO(cfg.model, postprocess_config=post)
h, w = canvas or model.model_config.image_size
calibration = list(np.random.RandomState(1).randint(0, 255, (8, h, w, 3)).astype(np.uint8))
# Untrained BatchNorm statistics (mean 0, variance 1) leave a deep backbone's activations far
# from a trained one's (MobileNetV3's fall to ~1e-3 by its 7th block), and int8 kernels are
# chosen by their ranges (XNNPack declines an int8 add whose input / output scales differ
# more than 1024x): every BatchNorm takes the statistics of its own input on these images
# (one pass in training mode, momentum 0), the ranges a trained network has.
norms = [l for l in model.get_layer("backbone")._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
for l in norms:
    l.trainable, l.momentum = True, 0.0
model.get_layer("backbone")(model.get_layer("normalize")(np.stack(calibration).astype("float32")), training=True)
files = {}
for q in quants.split(","):
    r = export_model(model, "tflite", os.path.join(out, f"{q}.tflite"), quantize=q, image_size=canvas,
                     calibration=calibration, postprocess=post)
    files["litert " + ("fp32" if q == "none" else q)] = str(r.path)
for f in formats.split(","):
    if f == "onnx":
        files["ort fp32"] = str(export_model(model, "onnx", os.path.join(out, "m.onnx"), image_size=canvas,
                                             postprocess=post).path)
    elif f == "saved_model":
        files["savedmodel fp32"] = str(export_model(model, "saved_model", os.path.join(out, "sm"), image_size=canvas,
                                                    postprocess=post).path)
print("FILES " + json.dumps({"files": files, "canvas": [int(h), int(w)]}))
"""


def export_files(root, name, canvas, out, quantizations, formats):
    """Run :data:`EXPORT_DRIVER` for the tree at ``root`` in a fresh process."""
    import json
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-c", EXPORT_DRIVER, str(root), name, "-" if canvas is None else f"{canvas[0]}x{canvas[1]}",
            str(out), ",".join(quantizations), ",".join(formats) or "-"]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FILES ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"export for {name} in {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("FILES "):])


class Runner:
    """One exported file, ready to invoke on a fixed uint8 canvas: LiteRT (2 threads), ONNX
    Runtime (2 threads, spinning off; its session exists only while it is being timed, so
    one session at a time) or a SavedModel's serving_default."""

    def __init__(self, label, path, canvas):
        self.label, self.path, self.canvas = label, Path(path), canvas
        self.size = sum(f.stat().st_size for f in self.path.rglob("*")) if self.path.is_dir() else self.path.stat().st_size
        self.x = np.random.RandomState(0).randint(0, 255, (1, *canvas, 3)).astype(np.uint8)
        self.walls, self.cpus, self._run = [], [], None
        if label.startswith("litert"):
            from ai_edge_litert.interpreter import Interpreter

            runner = Interpreter(model_path=str(path), num_threads=THREADS).get_signature_runner()
            self._run = lambda: runner(images=self.x)
        elif label.startswith("savedmodel"):
            import tensorflow as tf

            serve = tf.saved_model.load(str(path)).signatures["serving_default"]
            x = tf.constant(self.x)
            self._run = lambda: serve(images=x)

    def time(self, invokes=1):
        run = self._run
        if run is None:  # ONNX Runtime
            import onnxruntime as ort

            from profile_onnx import session_options

            sess = ort.InferenceSession(str(self.path), session_options(), providers=["CPUExecutionProvider"])
            run = lambda: sess.run(None, {"images": self.x})  # noqa: E731
            for _ in range(2):  # a new session's first runs allocate its memory arena
                run()
        run()
        for _ in range(invokes):
            start, cpu = time.perf_counter(), time.process_time()
            run()
            self.walls.append((time.perf_counter() - start) * 1000)
            self.cpus.append((time.process_time() - cpu) * 1000)
        # the ORT session (and the closure holding it) ends with this call: one at a time

    def summary(self):
        return min(self.walls), float(np.median(self.walls)), float(np.median(self.cpus))


def side_by_side(runners, rounds):
    """Every file once per round, in turn, ``rounds`` times: the machine's drift falls on all."""
    for r in runners:
        r.time(1)  # warm-up
        r.walls, r.cpus = [], []
    for _ in range(rounds):
        for r in runners:
            r.time(1)


def breakdown(files):
    """Per op group ms (LiteRT sum of one-op models: benchmarks/profile_tflite.py) of the
    LiteRT fp32 and int8 files among ``files`` ({label: path}), with the pyramid's P2 3x3
    conv alone."""
    from profile_tflite import GROUPS, profile

    rows = {}
    for label in files:
        if not label.startswith(("litert fp32", "litert int8")):
            continue
        result = profile(Path(files[label]).read_bytes(), repeats=3)
        sums = {g: 0.0 for g in GROUPS}
        p2 = 0.0
        for ms, _, _, g, name in result["ops"]:
            sums[g] += ms
            p2 += ms if "fpn" in name and "output_P2" in name else 0.0
        rows[label] = (result["total"], sums, p2)
    return rows


def onnx_breakdown(files):
    """ORT's own per-node profile of each ONNX file among ``files``, summed per op group
    (benchmarks/profile_onnx.py): {label: "group ms (top op types), ..."}."""
    import collections

    from profile_onnx import group_of, profile

    rows = {}
    for label, path in files.items():
        if not label.startswith("ort"):
            continue
        by_group = collections.defaultdict(float)
        by_type = collections.defaultdict(lambda: collections.defaultdict(float))
        for (name, kind), ms in profile(path, repeats=10)["nodes"].items():
            by_group[group_of(name, kind)] += ms
            by_type[group_of(name, kind)][kind] += ms
        rows[label] = f"total {sum(by_group.values()):.1f}; " + "; ".join(
            f"{g} {ms:.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_type[g].items(), key=lambda kv: -kv[1])[:3])
            + ")" for g, ms in sorted(by_group.items(), key=lambda kv: -kv[1]))
    return rows


def measure(configs, quantizations, formats, rounds, ref=None, profile=False):
    """Export each config (this tree, and ``ref``'s code when given), then time every file
    side by side; print one table per config, and the per-group breakdown with ``profile``."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    ref_root = None
    try:
        if ref:
            ref_root = tmp / "ref_tree"
            subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(ref_root), ref], check=True,
                           capture_output=True)
        for spec in configs:
            name, _, size = spec.partition("@")
            canvas = tuple(int(v) for v in size.split("x")) if size else None
            trees = [("after", root)] + ([("before", ref_root)] if ref_root else [])
            runners, canvas_hw = [], None
            for tag, tree in trees:
                got = export_files(tree, name, canvas, tmp / name / tag, quantizations, formats)
                canvas_hw = tuple(got["canvas"])
                for label, path in got["files"].items():
                    runners.append(Runner(f"{label} ({tag})" if ref_root else label, path, canvas_hw))
            side_by_side(runners, rounds)
            base = next(r for r in runners if r.label.startswith("litert fp32")).summary()[1]
            print(f"\n{name} at {canvas_hw[0]}x{canvas_hw[1]}, batch 1, {rounds} rounds side by side, "
                  f"load1 {os.getloadavg()[0]:.1f}")
            print(f"{'runtime / quant':<28} {'MB':>7} {'wall min':>9} {'median':>8} {'cpu':>8} {'vs LiteRT fp32':>15}")
            for r in runners:
                lo, med, cpu = r.summary()
                print(f"{r.label:<28} {r.size / 1e6:>7.1f} {lo:>9.1f} {med:>8.1f} {cpu:>8.1f} {med / base:>15.2f}",
                      flush=True)
            if profile:
                files = {r.label: r.path for r in runners}
                for label, (total, sums, p2) in breakdown(files).items():
                    parts = ", ".join(f"{g} {v:.1f}" for g, v in sums.items() if v >= 0.05)
                    print(f"  {label} op groups (sum of one-op models, ms): {parts}; FPN P2 3x3 conv {p2:.1f}",
                          flush=True)
                for label, parts in onnx_breakdown(files).items():
                    print(f"  {label} ORT kernel ms per op group (its profiler): {parts}", flush=True)
    finally:
        if ref_root is not None:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(ref_root)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def sweep(base, repeats, points=None):
    from solo_tf.export import ExportOptions
    from solo_tf.export.tflite import write_tflite

    print(f"sweep over {base} (fp32, LiteRT {THREADS} threads)")
    print(f"{'design point':<52} {'MB':>6} {'network wall/cpu':>17} {'full wall/cpu':>15}")
    model, _ = build(base)
    with tempfile.TemporaryDirectory() as tmp:
        data = backbone_tflite(model, Path(tmp))
        print(f"{'backbone alone':<52} {len(data) / 1e6:>6.1f} {litert_ms(data, repeats):>17}", flush=True)
    for i, (label, overrides) in enumerate(SWEEP.items()):
        if points and i not in points:
            continue
        model, post = build(base, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            net = write_tflite(model, Path(tmp) / "n.tflite", ExportOptions(post, raw_outputs=True))
            full = write_tflite(model, Path(tmp) / "f.tflite", ExportOptions(post))
            print(f"{label:<52} {full.size_bytes / 1e6:>6.1f} {litert_ms(net.path.read_bytes(), repeats):>17} "
                  f"{litert_ms(full.path.read_bytes(), repeats):>15}", flush=True)


def train_tiny(variant, steps=80):
    """A tiny model (tiny backbone, 64x64 canvas, 6 classes) fitted for ``steps`` steps on 16
    shapes images, so its detections are real (the export tests' model)."""
    import keras

    from solo_tf.config import DataConfig, ModelConfig, PostprocessConfig
    from solo_tf.data.shapes import ShapesSourceConfig
    from solo_tf.data.pipeline import prepare, shapes_source
    from solo_tf.model import SOLO

    cfg = ModelConfig(variant=variant, backbone="tiny", num_classes=6, image_size=(64, 64), fpn_channels=32,
                      num_grids=(12, 8, 6), strides=(8, 16, 32), scale_ranges=((1, 32), (16, 64), (32, 256)),
                      head_channels=32, stacked_convs=2, mask_feature_channels=16, mask_channels=32, norm_groups=8)
    data = DataConfig(max_instances=6, flip=False, shapes=ShapesSourceConfig(
        num_train=16, image_size=(64, 64), max_objects=3, object_size=(0.3, 0.6)))
    images, y = next(iter(prepare(shapes_source(data, "train", 6).records, cfg, data, batch_size=16, training=False)))
    keras.utils.set_random_seed(0)
    model = SOLO(cfg, postprocess_config=PostprocessConfig(nms_pre=100, max_per_img=20))
    model.compile(optimizer=keras.optimizers.Adam(3e-3, global_clipnorm=35.0))
    model.fit(images.numpy(), {k: v.numpy() for k, v in y.items()}, batch_size=8, epochs=steps // 2, verbose=0,
              shuffle=False)
    return model


def tiny_variants(repeats):
    """Per variant and quantisation: size, latency in the three runtimes, and parity with
    Keras (fp32 formats) or agreement with fp32 (quantised), on 12 held-out shapes images."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from solo_tf.data.shapes import ShapesGenerator
    from solo_tf.decoder import decode
    from solo_tf.export import ExportOptions, export_model
    from solo_tf.export.tflite import write_tflite
    from solo_tf.parity import compare_detections, mask_agreement
    from solo_tf.preprocess import letterbox

    gen = ShapesGenerator(image_size=(64, 64), max_objects=3, seed=0, min_size=0.3, max_size=0.6)
    canvases = np.stack([np.round(np.asarray(letterbox(gen.sample(1000 + i)["image"], (64, 64))[0])).astype(np.uint8)
                         for i in range(12)])
    calibration = np.stack([gen.sample(i)["image"] for i in range(32)]).astype(np.float32)

    def per_image(d, i):
        return {k: np.asarray(v)[i] for k, v in d.items()}

    def parity(ref, out):
        rs = [compare_detections(per_image(ref, i), per_image(out, i), borderline=0.05) for i in range(len(canvases))]
        return (f"{sum(r['matched'] for r in rs)} matched, {sum(r['unmatched'] for r in rs)} unmatched, "
                f"max |d score| {max(r['max_score_diff'] for r in rs):.1e}, min IoU {min(r['min_mask_iou'] for r in rs):.3f}")

    def run_lite(data):
        runner = Interpreter(model_content=data, num_threads=THREADS).get_signature_runner()
        outs = [runner(images=c[None]) for c in canvases]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    print(f"{'variant':<15} {'format':<12} {'quant':<8} {'KB':>7} {'ms wall/cpu':>15}  parity / agreement")
    for variant in ("solov2", "solo", "decoupled_solo"):
        model = train_tiny(variant)
        post = model.postprocess_config
        raw = model(canvases.astype(np.float32), training=False)
        ref = {k: np.asarray(v) for k, v in decode(raw, model.model_config, post, full_size_masks=False).items()}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            bb = backbone_tflite(model, work)
            print(f"{variant:<15} {'tflite':<12} {'backbone':<8} {len(bb) / 1e3:>7.0f} {litert_ms(bb, repeats):>15}")
            sm = export_model(model, "saved_model", work / "sm")
            serve = tf.saved_model.load(str(sm.path)).signatures["serving_default"]
            out = {k: v.numpy() for k, v in serve(images=tf.constant(canvases)).items()}
            print(f"{variant:<15} {'saved_model':<12} {'fp32':<8} {sm.size_bytes / 1e3:>7.0f} "
                  f"{saved_model_ms(sm.path, (64, 64), repeats):>15}  {parity(ref, out)}")
            onnx = export_model(model, "onnx", work / "m.onnx")
            import onnxruntime as ort

            sess = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
            out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": canvases})))
            print(f"{variant:<15} {'onnx':<12} {'fp32':<8} {onnx.size_bytes / 1e3:>7.0f} "
                  f"{onnx_ms(onnx.path, repeats):>15}  {parity(ref, out)}")
            fp32 = None
            for q in ("none", "fp16", "dynamic", "int8"):
                lite = write_tflite(model, work / f"{q}.tflite", ExportOptions(post), quantize=q,
                                    calibration=np.stack([np.asarray(letterbox(c, (64, 64))[0]) for c in calibration])
                                    if q == "int8" else None)
                data = lite.path.read_bytes()
                out = run_lite(data)
                if q == "none":
                    fp32, note = out, parity(ref, out)
                else:
                    a = mask_agreement([per_image(fp32, i) for i in range(len(canvases))],
                                       [per_image(out, i) for i in range(len(canvases))])
                    note = f"vs fp32: mean mask IoU {a['mean_iou']:.3f} over {a['count']}, recall@0.5 {a['recall']:.2f}"
                print(f"{variant:<15} {'tflite':<12} {'fp32' if q == 'none' else q:<8} {len(data) / 1e3:>7.0f} "
                      f"{litert_ms(data, repeats):>15}  {note}", flush=True)


def trained_agreement(model_path, quantizations, images=50, calibration=100, repeats=10):
    """A trained model (e.g. ``solo-tf demo``'s ``model.keras``, its ``config.yaml`` beside it):
    each quantised TFLite export against the fp32 one on ``images`` held-out images of its
    config's validation split (int8 calibrated on ``calibration`` training images): mean
    mask IoU and recall at IoU 0.5 of the fp32 detections scored >= 0.3 (what ``solo-tf
    predict`` keeps) and of all of them, and the latency of each file."""
    from solo_tf.data.sources import load_source
    from solo_tf.export import export_model
    from solo_tf.parity import mask_agreement
    from solo_tf.preprocess import letterbox
    from solo_tf.settings import resolve

    settings = resolve(model_path)
    canvas = tuple(settings.model.canvases[0])
    src = load_source(settings.config, "val")
    canvases = np.stack([np.round(np.asarray(letterbox(r["image"].numpy(), canvas)[0])).astype(np.uint8)
                         for r in src.records.take(images)])

    def run(data):
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_content=data, num_threads=THREADS).get_signature_runner()
        return [runner(images=c[None]) for c in canvases]

    def one(outs, i):
        return {k: np.asarray(v)[0] for k, v in outs[i].items()}

    print(f"{model_path}: {len(canvases)} held-out images at {canvas}, int8 calibrated on {calibration}")
    print(f"{'quant':<8} {'KB':>7} {'LiteRT wall/cpu':>17}  agreement with fp32")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = None
        for q in ["none", *[q for q in quantizations if q != "none"]]:
            result = export_model(model_path, "tflite", Path(tmp) / f"{q}.tflite", quantize=q,
                                  calibration=calibration)
            data = result.path.read_bytes()
            outs = run(data)
            if q == "none":
                fp32 = outs
                dets = sum(int(o["num_detections"][0]) for o in outs)
                note = f"{dets} detections"
            else:
                notes = []
                for min_score in (0.3, 0.0):  # 0.3: what solo-tf predict keeps; 0: every fp32 detection
                    a = mask_agreement([one(fp32, i) for i in range(len(canvases))],
                                       [one(outs, i) for i in range(len(canvases))], min_score=min_score)
                    notes.append(f"score >= {min_score}: mean mask IoU {a['mean_iou']:.3f} over {a['count']}, "
                                 f"recall@0.5 {a['recall']:.2f}")
                note = "; ".join(notes)
            print(f"{'fp32' if q == 'none' else q:<8} {len(data) / 1e3:>7.0f} {litert_ms(data, repeats):>17}  {note}",
                  flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=["solov2_mobile_mnv3l_448"],
                   help="presets, each with an optional canvas: solov2_light_r18@448x768")
    p.add_argument("--quantize", nargs="*", default=["none", "fp16", "dynamic", "int8"])
    p.add_argument("--formats", nargs="*", default=["onnx", "saved_model"], help="also time these (fp32)")
    p.add_argument("--rounds", type=int, default=20, help="side-by-side rounds (one invoke of every file each)")
    p.add_argument("--ref", help="also export with this commit's code (a temporary git worktree) and time "
                                 "its files beside this tree's: before / after in one run")
    p.add_argument("--profile", action="store_true",
                   help="per op group breakdown of the LiteRT fp32 and int8 files (benchmarks/profile_tflite.py) "
                        "and of the ONNX files (ORT's profiler: benchmarks/profile_onnx.py)")
    p.add_argument("--repeats", type=int, default=10, help="--sweep / --tiny / --trained: invokes per file")
    p.add_argument("--sweep", action="store_true", help="time the mobile head's design points")
    p.add_argument("--sweep-base", default="solov2_light_mnv3l_448")
    p.add_argument("--sweep-points", type=int, nargs="*", help="only these design points (0-based)")
    p.add_argument("--tiny", action="store_true",
                   help="the three variants as tiny trained models: sizes, latencies, parity per format")
    p.add_argument("--trained", metavar="MODEL_KERAS",
                   help="a trained model (config.yaml beside it): quantised exports against fp32 on held-out images")
    p.add_argument("--images", type=int, default=50, help="--trained: held-out images")
    args = p.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpus={os.cpu_count()} threads={THREADS} load1={load:.1f} tensorflow={tf.__version__}")
    if args.sweep:
        sweep(args.sweep_base, args.repeats, args.sweep_points)
        return
    if args.tiny:
        tiny_variants(args.repeats)
        return
    if args.trained:
        trained_agreement(args.trained, args.quantize, args.images, repeats=args.repeats)
        return
    measure(args.configs, args.quantize, args.formats, args.rounds, ref=args.ref, profile=args.profile)


if __name__ == "__main__":
    main()
