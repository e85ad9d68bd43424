"""Train and inference speed, compile time and peak memory against the Mask R-CNN peer, on one device.

What issue 25 asks of a GPU run (an H200 with JAX and PyTorch, no TensorFlow), in one script
that a device call runs in at most 8 minutes (``benchmarks/gpu_run.sh``):

* SOLOv2-R50 and SOLOv2-light-R18 at 800x1088, batch 8, ``train.mixed_precision: bfloat16``
  (the Keras ``mixed_bfloat16`` policy; variables, losses and the decoder's scores float32):
  - ``train``: ``model.fit`` img/s (median step after warm-up; each step waits for its logs,
    so the figure is the device step, not Python's dispatch), peak device memory per image,
    and the COMPILE time (first step's wall minus a steady step);
  - ``infer``: batch-1 latency of the network + in-graph decoder (Matrix NMS, full-size
    masks left on the device, as torchvision leaves its), median, and its compile time;
* ``peer``: torchvision Mask R-CNN R50-FPN, random init (no download), the same size, batch
  and bfloat16 autocast, training img/s, peak memory and batch-1 latency, in the same run.

Both sides train from scratch, as their random-init defaults build them: every backbone
stage trainable, BatchNorm in training mode (the pretrained recipes freeze the stem, stage 1
and BatchNorm on both sides, which makes both faster). Same optimizer on both sides (SGD,
momentum 0.9, weight decay 1e-4, at the learning rate a warm-up starts from, so that random
weights stay finite and the peer's proposals behave; the SOLO side also clips the global
norm at 35 as its preset does). The batches are synthetic (8 rectangles per image, the SOLO side padded to
``data.max_instances`` slots as its pipeline pads), built once and put on the device: the
figure is the train step, not the input pipeline (``bench_pipeline.py``).

Each measurement runs in its own process with its own timeout (JAX has no reset of its peak
memory counter, and a compile that overruns costs one part, not the run), and the whole run
keeps to ``--deadline-s``: the parts run in order of need (the first config's training, the
peer, the first config's inference, then the others) and a part that no longer fits is
skipped, saying so. Results are written as they come to ``--out`` (``bench_gpu.json``,
``bench_gpu.md``), so a run cut short keeps what it measured.

Memory: JAX runs with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (JAX otherwise reserves 75% of
the card up front, which is what nvidia-smi would show) and the figure is the allocator's
``memory_stats()["peak_bytes_in_use"]``: the most the process ever had allocated, XLA's
compile-time autotuning scratch included (no reset exists). torchvision's is
``torch.cuda.max_memory_allocated()`` over the training steps (reset before them). Where the
device reports no memory (CPU) the figure is the process's peak RSS.

    bash benchmarks/gpu_run.sh                                  # on the GPU machine: the figures
    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --quick    # CPU smoke size: 256x352, batch 2

``--quick`` exists because the machines without a GPU cannot run the full size in useful
time; its figures are CPU figures and say nothing about the GPU goals.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ["solov2_r50", "solov2_light_r18"]
OBJECTS = 8
PEER = "maskrcnn_r50_fpn"
GOAL = 1.5  # SOLOv2-R50 training img/s over Mask R-CNN's (issue 25)
# per-part timeouts (s) at the full size; the deadline caps each one further
TIMEOUTS = {"train": 210, "infer": 120, "peer": 150}
MIN_PART_S = 45  # a part with less time than this left is skipped


def synthetic_batch(batch, h, w, num_classes, slots, seed=0):
    """Images and padded ground truth with OBJECTS rectangles per image (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, h, w, 3)).astype("float32")
    masks = np.zeros((batch, slots, h // 4, w // 4), np.uint8)
    classes = np.full((batch, slots), -1, np.int32)
    boxes = np.zeros((batch, slots, 4), np.float32)
    centers = np.zeros((batch, slots, 2), np.float32)
    for b in range(batch):
        for k in range(min(OBJECTS, slots)):
            bh, bw = rng.integers(h // 16, h // 2), rng.integers(w // 16, w // 2)
            y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
            y0, x0, bh, bw = (int(v) // 4 * 4 for v in (y0, x0, bh, bw))
            masks[b, k, y0 // 4:(y0 + bh) // 4, x0 // 4:(x0 + bw) // 4] = 1
            classes[b, k] = rng.integers(0, num_classes)
            boxes[b, k] = (x0, y0, x0 + bw, y0 + bh)
            centers[b, k] = (x0 + bw / 2 - 0.5, y0 + bh / 2 - 0.5)
    return images, {"classes": classes, "boxes": boxes, "masks": masks, "centers": centers}


# --- children: one measurement each, results written to --result-file as they come ----------

class Recorder:
    """The child's result dict, rewritten to its file at each update (a killed child keeps
    what it had measured, and ``stage`` says where it was)."""

    def __init__(self, path, **fields):
        self.path = path
        self.data = dict(fields)
        self.t0 = time.perf_counter()

    def update(self, **fields):
        self.data.update(fields)
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f)
            os.replace(tmp, self.path)
        print(f"[bench_gpu] {self.data.get('model')} {self.data.get('part')}: "
              + ", ".join(f"{k}={_fmt(v)}" for k, v in fields.items()), flush=True)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def jax_memory():
    """(peak MB, in-use MB, what) of JAX's first device, or the process's peak RSS."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        try:
            stats = jax.devices()[0].memory_stats() or {}
        except Exception:  # noqa: BLE001 - a backend without memory stats falls back to RSS
            stats = {}
        if "peak_bytes_in_use" in stats:
            return (stats["peak_bytes_in_use"] / 2**20, stats.get("bytes_in_use", 0) / 2**20,
                    f"{jax.devices()[0].platform} peak_bytes_in_use")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None, "peak RSS"


def solo_setup(name, size, batch, precision):
    """The preset at ``size`` with the benchmark's settings, and its model (built, compiled)."""
    import keras

    from solo_tf.config import load_config
    from solo_tf.model import SOLO
    from solo_tf.training import make_optimizer, set_precision

    cfg = load_config(name)
    cfg.model.image_size = tuple(size)
    cfg.model.portrait_canvas = False  # one canvas: the benchmark feeds one size
    cfg.train.batch_size = batch
    cfg.train.targets_in = "model"  # the pipeline's targets need TensorFlow; JAX computes them in the step
    cfg.train.mixed_precision = False if precision == "float32" else precision
    cfg.validate()
    set_precision(cfg.train)
    model = SOLO(cfg.model, cfg.loss, cfg.labels, cfg.postprocess)
    model.compile(optimizer=make_optimizer(cfg.train, steps_per_epoch=1000))
    return cfg, model, keras.config.dtype_policy().name


def keras_import_guard():
    """Keras 3.15's JAX backend imports JAX's TPU splash-attention kernels at import time; a
    JAX that moved them would stop ``import keras`` on the GPU machine (JAX 0.11.2 there, never
    tried here). This benchmark uses no attention: stand-ins for them then, saying so."""
    if os.environ.get("KERAS_BACKEND") != "jax":
        return None
    import importlib
    import types

    name = "jax.experimental.pallas.ops.tpu.splash_attention"
    try:
        importlib.import_module(name)
        return None
    except Exception as e:  # noqa: BLE001 - absent, or failing to import on this JAX
        stub = types.ModuleType(name)
        for sub in ("splash_attention_kernel", "splash_attention_mask"):
            sys.modules[f"{name}.{sub}"] = module = types.ModuleType(f"{name}.{sub}")
            setattr(stub, sub, module)
        sys.modules[name] = stub
        return f"{name} stubbed for Keras ({type(e).__name__}: {e})"[:300]


def versions():
    import keras

    out = {"keras": keras.__version__, "backend": keras.backend.backend()}
    if out["backend"] == "jax":
        import jax

        dev = jax.devices()[0]
        out.update(jax=jax.__version__, device=f"{dev.platform}:{getattr(dev, 'device_kind', '?')}")
    return out


def run_solo_train(rec, name, size, batch, steps, warmup, precision):
    import keras
    from keras import ops

    rec.update(stage="import", **versions())
    t = time.perf_counter()
    cfg, model, policy = solo_setup(name, size, batch, precision)
    slots = cfg.data.max_instances
    images, y = synthetic_batch(batch, *size, cfg.model.num_classes, slots=slots)
    x = ops.convert_to_tensor(images)
    y = {k: ops.convert_to_tensor(v) for k, v in y.items()}
    rec.update(stage="built", build_s=time.perf_counter() - t, policy=policy, slots=slots,
               params_m=model.count_params() / 1e6)

    def batches():
        while True:
            yield x, y

    times, losses = [], []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            logs = keras.tree.map_structure(ops.convert_to_numpy, logs)  # waits for the step
            times.append(time.perf_counter() - self.t)
            losses.append(float(logs["loss"]))
            if len(times) == 1:
                rec.update(stage="compiled", first_step_s=times[0])

    t = time.perf_counter()
    model.fit(batches(), steps_per_epoch=warmup + steps, epochs=1, verbose=0, shuffle=False, callbacks=[Timer()])
    fit_s = time.perf_counter() - t
    steady = times[warmup:]
    step = statistics.median(steady)
    peak, in_use, kind = jax_memory()
    rec.update(stage="done", train_img_s=batch / step, step_ms=step * 1000,
               step_ms_mean=statistics.mean(steady) * 1000, step_ms_min=min(steady) * 1000,
               compile_s=times[0] - step, fit_s=fit_s, steps=len(steady), warmup=warmup,
               peak_mb=peak, peak_mb_per_img=peak / batch, in_use_mb=in_use, memory=kind,
               loss_first=losses[0], loss_last=losses[-1])


def run_solo_infer(rec, name, size, steps, precision):
    import keras
    import numpy as np
    from keras import ops

    from solo_tf.inference import build_inference_model

    rec.update(stage="import", **versions())
    t = time.perf_counter()
    cfg, model, policy = solo_setup(name, size, 1, precision)
    infer = build_inference_model(model, cfg.postprocess, full_size_masks=True)
    images, _ = synthetic_batch(1, *size, cfg.model.num_classes, slots=1)
    one = ops.convert_to_tensor(images)
    if keras.backend.backend() == "jax":
        import jax

        tv = [v.value for v in infer.trainable_variables]
        ntv = [v.value for v in infer.non_trainable_variables]

        @jax.jit
        def forward(tv, ntv, x):
            return infer.stateless_call(tv, ntv, x, training=False)[0]

        def call():  # outputs stay on the device, as torchvision's do; wait for all of them
            return jax.block_until_ready(forward(tv, ntv, one))
        how = "jax.jit(stateless_call), outputs on the device"
    else:
        def call():
            return infer.predict_on_batch(one)
        how = "predict_on_batch (outputs to numpy)"
    rec.update(stage="built", build_s=time.perf_counter() - t, policy=policy, how=how)
    t = time.perf_counter()
    out = call()
    first = time.perf_counter() - t
    rec.update(stage="compiled", first_call_s=first)
    call()
    lat = []
    for _ in range(steps):
        t = time.perf_counter()
        out = call()
        lat.append(time.perf_counter() - t)
    med = statistics.median(lat)
    peak, _, kind = jax_memory()
    rec.update(stage="done", infer_ms=med * 1000, infer_ms_min=min(lat) * 1000, compile_s=first - med,
               calls=len(lat), detections=int(np.asarray(out["num_detections"])[0]),
               infer_peak_mb=peak, memory=kind)


def run_peer(rec, size, batch, steps, warmup, precision, infer_steps):
    try:
        import torch
        import torchvision
    except ImportError as e:
        rec.update(stage="skipped", skipped=f"{e.name} is not installed")
        return
    cuda = torch.cuda.is_available()
    rec.update(stage="import", torch=torch.__version__, torchvision=torchvision.__version__,
               device=torch.cuda.get_device_name(0) if cuda else "cpu", model=f"{PEER} (torchvision)")
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision) if cuda else None
    try:
        peer_measure(rec, torch, size, batch, steps, warmup, amp_dtype, infer_steps)
        return
    except Exception as e:  # bfloat16 autocast failing in a training op: the usual float16 AMP
        if amp_dtype != torch.bfloat16 or "train_img_s" in rec.data:
            raise
        rec.update(stage="bf16 failed", bf16_error=f"{type(e).__name__}: {e}"[:1000],
                   bf16_traceback=traceback.format_exc()[-2000:])
    torch.cuda.empty_cache()  # out of the except block: the failed run's tensors are freed
    peer_measure(rec, torch, size, batch, steps, warmup, torch.float16, infer_steps)


def peer_measure(rec, torch, size, batch, steps, warmup, amp_dtype, infer_steps):
    """torchvision Mask R-CNN: train steps, then batch-1 latency; ``amp_dtype`` None: float32."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    amp = amp_dtype is not None
    autocast_dtype = amp_dtype or torch.bfloat16  # a dtype autocast accepts; unused when disabled
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t = time.perf_counter()
    h, w = size
    torch.manual_seed(0)
    # the builder's random-init defaults: BatchNorm trainable, all 5 backbone stages trained;
    # min/max size = the canvas, so its transform keeps 800x1088 (no resize, no padding)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                  min_size=min(h, w), max_size=max(h, w)).to(dev)
    images_np, y = synthetic_batch(batch, h, w, 80, slots=OBJECTS)
    images = [torch.from_numpy(im).permute(2, 0, 1).contiguous().to(dev) / 255.0 for im in images_np]
    targets = []
    for b in range(batch):
        real = y["classes"][b] >= 0
        masks = torch.from_numpy(y["masks"][b][real]).repeat_interleave(4, 1).repeat_interleave(4, 2)
        targets.append({"boxes": torch.from_numpy(y["boxes"][b][real]).to(dev),
                        "labels": torch.from_numpy(y["classes"][b][real] + 1).long().to(dev),
                        "masks": masks.to(dev)})
    # lr 5e-5: the SOLO side's first-step lr at batch 8 (0.005 x warmup_ratio 0.01), where warm-up starts:
    # random weights stay finite, so proposals and sampling behave as in a real run's steps
    opt = torch.optim.SGD(model.parameters(), lr=5e-5, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bfloat16 needs none
    sync()
    rec.update(stage="built", build_s=time.perf_counter() - t, amp=str(amp_dtype) if amp else "off",
               params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    model.train()
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))  # waits for the step
        sync()
        times.append(time.perf_counter() - t)
        if i == 0:
            rec.update(stage="first step", first_step_s=times[0])
    steady = times[warmup:]
    step = statistics.median(steady)
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"
    rec.update(stage="trained", train_img_s=batch / step, step_ms=step * 1000,
               step_ms_mean=statistics.mean(steady) * 1000, step_ms_min=min(steady) * 1000,
               compile_s=times[0] - step, steps=len(steady), warmup=warmup,
               peak_mb=peak, peak_mb_per_img=peak / batch, memory=kind,
               loss_first=losses[0], loss_last=losses[-1])

    model.eval()
    one = images[:1]

    def latency(n, dtype):
        lat = []
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=amp):
            for _ in range(3 + n):  # 3 warm-up calls
                t = time.perf_counter()
                out = model(one)
                sync()
                lat.append(time.perf_counter() - t)
        return statistics.median(lat[3:]), min(lat[3:]), len(out[0]["boxes"])

    def infer(dtype):
        model.roi_heads.score_thresh = 0.05  # torchvision's default
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        med, best, dets = latency(infer_steps, dtype)
        rec.update(stage="inferred", infer_ms=med * 1000, infer_ms_min=best * 1000, detections=dets,
                   infer_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
        # random weights leave few boxes over the 0.05 score threshold, so its mask head idles;
        # the same latency with every box kept (100 detections, as a busy COCO image gives)
        model.roi_heads.score_thresh = 0.0
        med, best, dets = latency(infer_steps, dtype)
        rec.update(stage="done", infer_ms_100det=med * 1000, detections_100det=dets)

    try:
        infer(autocast_dtype)
        return
    except Exception as e:  # bfloat16 autocast failing in an inference op: float16 autocast
        if amp_dtype != torch.bfloat16:
            raise
        rec.update(infer_bf16_error=f"{type(e).__name__}: {e}"[:1000], infer_amp=str(torch.float16))
    infer(torch.float16)


def child(args):
    size, precision = tuple(args.size), args.precision
    part = "peer" if args.one == PEER else args.part
    rec = Recorder(args.result_file, model=args.one, part=part, size=f"{size[0]}x{size[1]}", precision=precision,
                   batch=1 if part == "infer" else args.batch)
    try:
        if part != "peer" and (note := keras_import_guard()):
            rec.update(import_note=note)
        if part == "peer":
            run_peer(rec, size, args.batch, args.steps, args.warmup, precision, args.infer_steps)
        elif part == "train":
            run_solo_train(rec, args.one, size, args.batch, args.steps, args.warmup, precision)
        else:
            run_solo_infer(rec, args.one, size, args.infer_steps, precision)
    except BaseException as e:  # recorded for the parent, then re-raised
        rec.update(error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-3000:])
        raise


# --- parent: the plan, timeouts, the tables ---------------------------------------------------

def plan(configs, peer):
    """(model, part) in order of need: what the goal needs first."""
    parts = []
    if configs:
        parts.append((configs[0], "train"))
    if peer:
        parts.append((PEER, "peer"))
    if configs:
        parts.append((configs[0], "infer"))
    for name in configs[1:]:
        parts += [(name, "train"), (name, "infer")]
    return parts


def _num(r, k, fmt):
    v = r.get(k)
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def table(rows):
    head = ("| model | part | status | train img/s | step ms | peak MB/img | compile s | infer ms | "
            "infer ms (100 det) | wall s |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        status = r.get("status", "?")
        lines.append(f"| {r.get('model')} | {r.get('part')} | {status} | {_num(r, 'train_img_s', '.2f')} | "
                     f"{_num(r, 'step_ms', '.1f')} | {_num(r, 'peak_mb_per_img', '.0f')} | "
                     f"{_num(r, 'compile_s', '.1f')} | {_num(r, 'infer_ms', '.1f')} | "
                     f"{_num(r, 'infer_ms_100det', '.1f')} | {_num(r, 'wall_s', '.0f')} |")
    return "\n".join(lines)


def ratios(rows):
    peer = next((r for r in rows if r.get("part") == "peer" and "train_img_s" in r), None)
    out = []
    for r in rows:
        if r.get("part") == "train" and "train_img_s" in r and peer:
            x = r["train_img_s"] / peer["train_img_s"]
            goal = f" (goal >= {GOAL}x: {'met' if x >= GOAL else 'NOT met'})" if r["model"] == "solov2_r50" else ""
            out.append(f"{r['model']} / {PEER} training img/s: {x:.2f}x{goal}; "
                       f"peak memory per image {r['peak_mb_per_img'] / peer['peak_mb_per_img']:.2f}x")
        if r.get("part") == "infer" and "infer_ms" in r and peer and "infer_ms" in peer:
            out.append(f"{r['model']} / {PEER} batch-1 latency: {r['infer_ms'] / peer['infer_ms']:.2f}x "
                       f"(against its 100-detection latency: "
                       f"{r['infer_ms'] / peer.get('infer_ms_100det', float('nan')):.2f}x)")
    return out


def write(out_dir, meta, rows):
    if not out_dir:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"# bench_gpu: {meta['size']} batch {meta['batch']} {meta['precision']}", "",
          ", ".join(f"{k}={v}" for k, v in meta.items()), "", table(rows), "",
          ("compile s: first step's (or call's) wall minus a steady one; for the peer, which compiles "
          "nothing, its first step's warm-up (CUDA, cuDNN, cuBLAS). peak MB/img: the training run's "
          "peak device memory over the batch (see the script's docstring)."), ""]
    md += [f"- {s}" for s in ratios(rows)]
    (out_dir / "bench_gpu.md").write_text("\n".join(md) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=CONFIGS)
    p.add_argument("--quick", action="store_true", help="CPU smoke size: 256x352, batch 2, 3 steps")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed training steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=None, help="training steps not timed (the first compiles)")
    p.add_argument("--infer-steps", type=int, default=None, help="timed batch-1 inference calls")
    p.add_argument("--precision", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--parts", nargs="*", choices=["train", "infer", "peer"], default=["train", "infer", "peer"])
    p.add_argument("--deadline-s", type=float, default=None, help="the whole run's budget; parts that no longer fit are skipped")
    p.add_argument("--timeout-scale", type=float, default=None, help="scales the per-part timeouts (default 1, --quick 3)")
    p.add_argument("--out", type=Path, default=None, help="folder for bench_gpu.json / bench_gpu.md, written after each part")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement in this process
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.size = list(args.size or ((256, 352) if args.quick else (800, 1088)))
    args.batch = args.batch or (2 if args.quick else 8)
    args.steps = args.steps or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.infer_steps = args.infer_steps or (5 if args.quick else 20)
    if args.one:
        child(args)
        return

    start = time.perf_counter()
    scale = args.timeout_scale or (3.0 if args.quick else 1.0)
    meta = {"size": f"{args.size[0]}x{args.size[1]}", "batch": args.batch, "precision": args.precision,
            "steps": args.steps, "warmup": args.warmup, "infer_steps": args.infer_steps,
            "backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "cpus": os.cpu_count(),
            "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print("[bench_gpu] " + " ".join(f"{k}={v}" for k, v in meta.items())
          + (" (--quick: CPU figures)" if args.quick else ""), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    parts = [(m, part) for m, part in plan(args.configs, not args.no_peer) if part in args.parts]
    rows = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    for name, part in parts:
        timeout = TIMEOUTS[part] * scale
        if args.deadline_s is not None:
            left = args.deadline_s - (time.perf_counter() - start)
            if left < MIN_PART_S:
                rows.append({"model": name, "part": part, "status": f"skipped: {max(left, 0):.0f} s left of the deadline"})
                print(f"[bench_gpu] {name} {part}: {rows[-1]['status']}", flush=True)
                write(args.out, meta, rows)
                continue
            timeout = min(timeout, left)
        result_file = tmp / f"bench_gpu_{os.getpid()}_{name}_{part}.json"
        result_file.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--one", name, "--part", part, "--result-file", str(result_file),
               "--size", *map(str, args.size), "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--infer-steps", str(args.infer_steps), "--precision", args.precision]
        print(f"[bench_gpu] --- {name} {part} (timeout {timeout:.0f} s, {time.perf_counter() - start:.0f} s into the run)",
              flush=True)
        t = time.perf_counter()
        # the child stays in this process group: whatever ends this run (the device call's
        # limit) ends the child too, so no orphan keeps the GPU busy for a next run
        proc = subprocess.Popen(cmd, env=env)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"timed out after {timeout:.0f} s"
        row = {"model": name, "part": part}
        if result_file.exists():
            row.update(json.loads(result_file.read_text()))
            result_file.unlink()
        if status == "ok" and row.get("skipped"):
            status = f"skipped: {row['skipped']}"
        elif status != "ok":
            status += f" at stage {row.get('stage', 'start')}"
        row.update(status=status, wall_s=time.perf_counter() - t)
        rows.append(row)
        print(f"[bench_gpu] {name} {part}: {status} in {row['wall_s']:.0f} s"
              + (f" -- {row['error']}" if "error" in row else ""), flush=True)
        write(args.out, meta, rows)
    meta["total_s"] = round(time.perf_counter() - start, 1)
    write(args.out, meta, rows)
    print("\n" + table(rows))
    for line in ratios(rows):
        print("- " + line)
    print(f"[bench_gpu] total {meta['total_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
