"""Predict on a folder: images/s of the batched folder predict against the same images one at
a time through ``Predictor.predict``, side by side in one run.

A folder of ``--images`` PNGs from the shapes generator at the demo's size (128x128) and the
``shapes_demo`` model, untrained (``--model`` takes a trained ``.keras`` instead). An
untrained model scores nothing above the demo's thresholds, which would leave the host's
share of the work (masks to the image size, RLE) at nothing; so unless ``--model`` is given
the decoder keeps its ``--instances`` best candidates whatever their score (score and update
thresholds 0), about what the trained demo model finds per image (1-5 shapes).

Timed, every one reading the PNGs from disk:

* ``one at a time``: ``Predictor(batch_size=1).predict([read_image(p)])`` per file;
* ``stream bN``: ``Predictor(batch_size=N).stream(folder)`` (batches of N, decoding and
  letterboxing in a reader thread ahead of the network);
* ``predict task``: ``solo_tf.tasks.predict(folder, overlays=False)`` (the stream, plus the
  COCO results JSON) at the task's default batch size, as the CLI runs it: loading the
  settings and tracing its graph (a second or two) are in its time; with ``--overlays``
  also the overlay PNGs (matplotlib, far slower than the network).

Each graph is traced before timing; the methods run in turns (``--rounds`` rounds, order
ABC.. ABC..) and each reports its median round, so a change of machine load hits all of
them alike. Prints figures; asserts nothing.

Measured on the 2-core CPU machine of the CI kind, one other job on it (load average 2.0-2.2
while it ran), 200 images, 3 rounds: one at a time 103 images/s; stream b8 228 (2.22x);
stream b16 254 (2.47x); the predict task at its default b16, 83 (0.80x): its time includes
loading the model file and tracing its graph (~1.6 s), which the other rows do before timing.
An earlier run with three other jobs on the machine (load 3.7) gave 1.44x / 1.88x: the
network alone costs ~7 ms an image at batch 1 and at batch 16 (compute-bound), so batching
wins back the per-call overhead and the host work, and the reader thread needs a free core.

    python benchmarks/bench_predict_folder.py                 # 200 images, 3 rounds
    python benchmarks/bench_predict_folder.py --batch-sizes 4 8 16 --overlays
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--model", help="a trained .keras (default: shapes_demo, untrained)")
    p.add_argument("--instances", type=int, default=5, help="untrained model: instances kept per image")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--overlays", action="store_true", help="also time the task writing overlay PNGs")
    args = p.parse_args()

    from PIL import Image

    from solo_tf import tasks
    from solo_tf.config import load_config
    from solo_tf.data.shapes import ShapesGenerator
    from solo_tf.inference import Predictor
    from solo_tf.media import read_image
    from solo_tf.model import build_model
    from solo_tf.saving import load_model

    if args.model:
        model = load_model(args.model)
        what = args.model
    else:
        cfg = load_config("shapes_demo")
        model = build_model(cfg)
        model.postprocess_config = dataclasses.replace(cfg.postprocess, score_thr=0.0, update_thr=0.0,
                                                       max_per_img=args.instances)
        what = f"shapes_demo untrained, {args.instances} instances per image"
    size = tuple(model.model_config.image_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    folder = tmp / "images"
    folder.mkdir()
    gen = ShapesGenerator(image_size=size, max_objects=5, seed=1)
    for i in range(args.images):
        Image.fromarray(gen.sample(i)["image"]).save(folder / f"{i:04d}.png")
    paths = sorted(folder.iterdir())

    single = Predictor(model, batch_size=1)
    batched = {n: Predictor(model, batch_size=n) for n in args.batch_sizes}

    def one_at_a_time():
        return sum(len(single.predict([read_image(path)])[0]["scores"]) for path in paths)

    def stream(n):
        return lambda: sum(len(r.instances["scores"]) for r in batched[n].stream(folder, progress=False))

    def task(overlays):
        def run():
            res = tasks.predict(model, folder, tmp / "out", batch_size=None, overlays=overlays, progress=False,
                                log=lambda line: None)
            return res.summary["detections"]
        return run

    methods = {"one at a time (Predictor.predict, b1)": one_at_a_time}
    methods.update({f"stream b{n}": stream(n) for n in args.batch_sizes})
    b = tasks.predict_batch_size(model)
    methods[f"predict task b{b}, JSON only"] = task(False)
    if args.overlays:
        methods[f"predict task b{b}, + overlay PNGs"] = task(True)

    # trace every graph before timing: batch 1, and each batch size (the task's too)
    single.predict([read_image(paths[0])])
    for n, pr in batched.items():
        list(pr.stream(paths[: n], progress=False))
    detections = {}
    times = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t = time.perf_counter()
            detections[name] = fn()
            times[name].append(time.perf_counter() - t)

    load = os.getloadavg()
    print(f"{args.images} images {size[0]}x{size[1]}, {what}; {args.rounds} rounds, median; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    base = statistics.median(times["one at a time (Predictor.predict, b1)"])
    print(f"{'method':<44} {'s':>7} {'images/s':>9} {'x one-at-a-time':>16} {'detections':>11}")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"{name:<44} {s:7.2f} {args.images / s:9.1f} {base / s:16.2f} {detections[name]:11d}")


if __name__ == "__main__":
    main()
