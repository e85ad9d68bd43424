"""Input-pipeline throughput (images/s) of the COCO and CIS680 sources on this machine.

For each source it times three stages, each after warm-up batches that are not counted:

* ``source``: records only (file read, image decode, mask rasterisation), unbatched;
* ``prepare``: + ``pipeline.prepare`` (resize, augment, pad, boxes/centres, stride-4
  masks, batching) - the batches ``model.fit`` gets with ``train.targets_in: model``;
* ``+targets``: + ``add_grid_targets`` - targets-ready batches (``targets_in: pipeline``).

``--previous`` also times the previous ``prepare`` (every mask resized to the full canvas;
``tests/prepare_reference.py``) in the same run, for a before/after ratio.

Without data arguments it writes synthetic data in a temporary folder in each format:
COCO-like 480x640 JPEGs with polygon objects, and the CIS680 layout (300x400, zlib-
compressed h5 as the homework files). Model geometry comes from presets (``solov2_r50``
for COCO: 800x1088, multi-scale; ``cis680_solo_r50`` for CIS680).

    python benchmarks/bench_pipeline.py
    python benchmarks/bench_pipeline.py --images 64 --batches 8 --sources cis680
    python benchmarks/bench_pipeline.py --coco-annotations ann.json --coco-images dir/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from solo_tf.config import load_config  # noqa: E402
from solo_tf.data.grid_targets import add_grid_targets, grid_targets_supported  # noqa: E402
from solo_tf.data import pipeline  # noqa: E402
from solo_tf.data.pipeline import prepare  # noqa: E402
from solo_tf.data.sources import cis680_source, coco_source  # noqa: E402


def _blob_polygon(rng, h, w):
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    ry, rx = rng.uniform(0.03, 0.3) * h, rng.uniform(0.03, 0.3) * w
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    r = rng.uniform(0.7, 1.0, t.size)
    xs = np.clip(cx + rx * r * np.cos(t), 0, w - 1)
    ys = np.clip(cy + ry * r * np.sin(t), 0, h - 1)
    return np.stack([xs, ys], 1).ravel().round(2).tolist()


def write_synthetic_coco(root: Path, n: int, h=480, w=640, objects=7, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(80)]}
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    for i in range(1, n + 1):
        # Smooth image + noise: JPEG decode cost like a photo's, not like flat colour.
        img = np.asarray(Image.fromarray(np.roll(base, i, 0)).resize((w, h)), np.int16)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:06d}.jpg", quality=90)
        doc["images"].append({"id": i, "file_name": f"{i:06d}.jpg", "height": h, "width": w})
        for _ in range(rng.integers(1, 2 * objects)):
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": i, "category_id": int(rng.integers(1, 81)),
                "segmentation": [_blob_polygon(rng, h, w)], "iscrowd": 0,
            })
    (root / "annotations.json").write_text(json.dumps(doc))
    return root / "annotations.json", root / "images"


def write_synthetic_cis680(root: Path, n: int, h=300, w=400, seed=0):
    import h5py

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    labels = [rng.integers(1, 4, rng.integers(1, 4)) for _ in range(n)]
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for lab in labels:
        for _ in lab:
            cy, cx, r = rng.uniform(40, h - 40), rng.uniform(40, w - 40), rng.uniform(10, 60)
            masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8))
    images = rng.integers(0, 256, (n, 3, h, w), dtype=np.uint8)
    with h5py.File(root / "img.h5", "w") as f:
        f.create_dataset("data", data=images, chunks=(1, 3, h, w), compression="gzip")
    with h5py.File(root / "mask.h5", "w") as f:
        f.create_dataset("data", data=np.array(masks), chunks=(1, h, w), compression="gzip")
    lab = np.empty(n, object)
    box = np.empty(n, object)
    for i, v in enumerate(labels):
        lab[i] = v
        box[i] = np.zeros((len(v), 4), np.float32)
    np.save(root / "labels.npy", lab, allow_pickle=True)
    np.save(root / "bboxes.npy", box, allow_pickle=True)
    return root


def rate(ds, warmup, count, per_item):
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(count):
        try:
            n += per_item(next(it))
        except StopIteration:
            break
    return n / (time.perf_counter() - t)


def bench(name, src_fn, config, batch, warmup, batches, previous=False):
    src = src_fn("train")
    m, d = config.model, config.data
    print(f"{name}: {src.num_records} images, model.image_size={tuple(m.image_size)}, "
          f"multiscale={d.multiscale}, max_instances={d.max_instances}, batch={batch}", flush=True)
    records = src.records.repeat()
    rows = [("source", rate(records, warmup * batch, batches * batch, lambda r: 1))]
    versions = [("", pipeline._prepare_one)]
    if previous:
        versions.insert(0, (" (previous)", _previous_prepare_one()))
    for suffix, prepare_one in versions:
        pipeline._prepare_one = prepare_one
        try:
            prepared = prepare(records, m, d, batch, training=True)
            rows.append(("prepare" + suffix, rate(prepared, warmup, batches, lambda b: int(b[0].shape[0]))))
            if grid_targets_supported():
                ready = add_grid_targets(prepare(records, m, d, batch, training=True), m)
                rows.append(("+targets" + suffix, rate(ready, warmup, batches, lambda b: int(b[0].shape[0]))))
        finally:
            pipeline._prepare_one = versions[-1][1]
    for stage, ips in rows:
        print(f"  {stage:<20} {ips:8.1f} images/s", flush=True)


def _previous_prepare_one():
    """The previous per-record code (every mask resized to the full canvas), kept in
    ``tests/prepare_reference.py`` as the reference the stride-4 one is tested against."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from prepare_reference import prepare_one_reference

    return prepare_one_reference


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="*", default=["coco", "cis680"])
    p.add_argument("--images", type=int, default=48, help="synthetic images per source")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=6, help="batches timed per stage")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--previous", action="store_true",
                   help="also time the previous full-resolution prepare (tests/prepare_reference.py), same run")
    p.add_argument("--coco-annotations")
    p.add_argument("--coco-images")
    p.add_argument("--cis680-dir", help="folder with the four homework files (hw3_mycocodata_*)")
    args = p.parse_args()
    print(f"cpus={os.cpu_count()} tf={tf.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "coco" in args.sources:
            cfg = load_config("solov2_r50")
            if args.coco_annotations:
                ann, imgs = args.coco_annotations, args.coco_images
            else:
                ann, imgs = write_synthetic_coco(tmp / "coco", args.images)
            data = dataclasses.replace(cfg.data, source="coco", coco=dataclasses.replace(
                cfg.data.coco, train_annotations=str(ann), train_images=str(imgs)))
            cfg = dataclasses.replace(cfg, data=data)
            bench("coco", lambda s: coco_source(data, s, cfg.model.num_classes), cfg, args.batch, args.warmup,
                  args.batches, args.previous)
        if "cis680" in args.sources:
            cfg = load_config("cis680_solo_r50")
            if args.cis680_dir:
                root = Path(args.cis680_dir)
                files = {k: next(iter(sorted(root.glob(f"*{k}*.np*" if k in ("labels", "bboxes") else f"*{k}*.h5"))))
                         for k in ("img", "mask", "labels", "bboxes")}
            else:
                root = write_synthetic_cis680(tmp / "cis680", args.images)
                files = {"img": root / "img.h5", "mask": root / "mask.h5", "labels": root / "labels.npy",
                         "bboxes": root / "bboxes.npy"}
            data = dataclasses.replace(cfg.data, cis680=dataclasses.replace(
                cfg.data.cis680, images=str(files["img"]), masks=str(files["mask"]),
                labels=str(files["labels"]), bboxes=str(files["bboxes"]), trust_pickle=True,
            ))
            cfg = dataclasses.replace(cfg, data=data)
            bench("cis680", lambda s: cis680_source(data, s, cfg.model.num_classes), cfg, args.batch, args.warmup,
                  args.batches, args.previous)


if __name__ == "__main__":
    main()
