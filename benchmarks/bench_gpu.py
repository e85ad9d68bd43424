"""Train and inference speed and peak memory against the Mask R-CNN peer, on one device.

What issue 10 asks of a GPU run, in one script that needs no TensorFlow (the GPU host has
JAX and PyTorch: run it with ``KERAS_BACKEND=jax``; on TensorFlow it runs too):

* ``train``: img/s (median step) and peak memory per image of ``model.fit`` for SOLOv2-R50,
  SOLO-R50 and SOLOv2-light-R18 at 800x1088, batch 8, mixed precision (float16 on a GPU);
* ``infer``: end-to-end latency at batch 1 (network + in-graph decoder, median);
* ``peer``: torchvision Mask R-CNN R50-FPN, random init, the same size, batch and AMP, in
  the same run on the same device (skipped, saying so, where torch is not installed).

Every measurement runs in its own process, so each peak is that run's own (device peak
memory where the backend reports it, else the process's peak RSS). The batches are
synthetic (8 rectangles per image), built once: the figure is the train step, not the input
pipeline (``bench_pipeline.py``) nor the target assignment (``bench_targets.py``).

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py            # the GPU figures
    python benchmarks/bench_gpu.py --quick                      # CPU smoke size: 256x352, batch 2, float32

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
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ["solov2_r50", "solo_r50", "solov2_light_r18"]
OBJECTS = 8


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


def peak_memory_mb():
    """Peak device memory of this process where the backend reports it, else peak RSS."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20, f"{jax.devices()[0].platform} peak"
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "gpu peak"
    except Exception:  # noqa: BLE001 - a backend without memory stats falls back to RSS
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"


def run_solo(name, size, batch, steps, warmup, mixed):
    import keras
    from keras import ops

    from solo_tf.config import load_config
    from solo_tf.inference import build_inference_model
    from solo_tf.model import SOLO

    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    cfg = load_config(name)
    cfg.model.image_size = tuple(size)
    model = SOLO(cfg.model, cfg.loss)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, global_clipnorm=35.0))
    images, y = synthetic_batch(batch, *size, cfg.model.num_classes, slots=16)

    def batches():
        while True:
            yield images, y

    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(batches(), steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[Timer()])
    step = statistics.median(times[warmup:])
    peak, kind = peak_memory_mb()
    infer = build_inference_model(model, cfg.postprocess)
    one = ops.convert_to_tensor(images[:1])
    for _ in range(2):
        infer.predict_on_batch(one)
    lat = []
    for _ in range(max(steps, 5)):
        t = time.perf_counter()
        keras.tree.map_structure(ops.convert_to_numpy, infer.predict_on_batch(one))
        lat.append(time.perf_counter() - t)
    return {"model": name, "train_img_s": batch / step, "step_s": step, "peak_mb_per_img": peak / batch,
            "memory": kind, "infer_ms": statistics.median(lat) * 1000}


def run_peer(size, batch, steps, warmup, mixed):
    try:
        import torch
        import torchvision
    except ImportError as e:
        return {"model": "maskrcnn_r50_fpn (torchvision)", "skipped": f"{e.name} is not installed"}
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    h, w = size
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                  min_size=min(h, w), max_size=max(h, w)).to(dev)
    images_np, y = synthetic_batch(batch, h, w, 80, slots=16)
    images = [torch.from_numpy(im).permute(2, 0, 1).to(dev) / 255.0 for im in images_np]
    targets = []
    for b in range(batch):
        real = y["classes"][b] >= 0
        masks = torch.from_numpy(y["masks"][b][real]).repeat_interleave(4, 1).repeat_interleave(4, 2)
        targets.append({"boxes": torch.from_numpy(y["boxes"][b][real]).to(dev),
                        "labels": torch.from_numpy(y["classes"][b][real] + 1).long().to(dev),
                        "masks": masks.to(dev)})
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=mixed and dev.type == "cuda")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    model.train()
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast(dev.type, enabled=mixed and dev.type == "cuda"):
            loss = sum(model(images, targets).values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync()
        times.append(time.perf_counter() - t)
    step = statistics.median(times[warmup:])
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda peak"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"
    model.eval()
    lat = []
    with torch.no_grad(), torch.autocast(dev.type, enabled=mixed and dev.type == "cuda"):
        for i in range(2 + max(steps, 5)):
            t = time.perf_counter()
            model(images[:1])
            sync()
            lat.append(time.perf_counter() - t)
    return {"model": f"maskrcnn_r50_fpn (torchvision {torchvision.__version__})", "train_img_s": batch / step,
            "step_s": step, "peak_mb_per_img": peak / batch, "memory": kind,
            "infer_ms": statistics.median(lat[2:]) * 1000}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=CONFIGS)
    p.add_argument("--quick", action="store_true", help="CPU smoke size: 256x352, batch 2, float32, 3 steps")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement in this process
    args = p.parse_args()
    size = tuple(args.size or ((256, 352) if args.quick else (800, 1088)))
    batch = args.batch or (2 if args.quick else 8)
    steps = args.steps or (3 if args.quick else 20)
    warmup = 1 if args.quick else 5
    mixed = not args.quick
    if args.one:
        out = (run_peer(size, batch, steps, warmup, mixed) if args.one == "peer"
               else run_solo(args.one, size, batch, steps, warmup, mixed))
        print("RESULT " + json.dumps(out), flush=True)
        return

    import keras

    print(f"backend={keras.backend.backend()} size={size[0]}x{size[1]} batch={batch} steps={steps} "
          f"mixed_precision={mixed} cpus={os.cpu_count()}" + (" (--quick: CPU figures)" if args.quick else ""))
    rows = []
    for name in args.configs + ([] if args.no_peer else ["peer"]):
        cmd = [sys.executable, __file__, "--one", name, "--size", *map(str, size), "--batch", str(batch),
               "--steps", str(steps)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            rows.append({"model": name, "failed": (proc.stderr or proc.stdout)[-600:]})
        else:
            rows.append(json.loads(lines[-1][7:]))
        r = rows[-1]
        if "train_img_s" in r:
            print(f"{r['model']:<40} train {r['train_img_s']:7.2f} img/s  {r['peak_mb_per_img']:8.0f} MB/img "
                  f"({r['memory']})  infer {r['infer_ms']:8.1f} ms", flush=True)
        else:
            print(f"{r['model']:<40} {r.get('skipped') or 'FAILED: ' + r['failed']}", flush=True)
    peer = next((r for r in rows if r["model"].startswith("maskrcnn") and "train_img_s" in r), None)
    if peer:
        for r in rows:
            if "train_img_s" in r and r is not peer:
                print(f"{r['model']:<40} vs peer: train {r['train_img_s'] / peer['train_img_s']:.2f}x img/s, "
                      f"infer {r['infer_ms'] / peer['infer_ms']:.2f}x latency, "
                      f"memory {r['peak_mb_per_img'] / peer['peak_mb_per_img']:.2f}x per image")


if __name__ == "__main__":
    main()
