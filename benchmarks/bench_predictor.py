"""Predictor latency, end to end (letterbox, network, decoder, masks at the image's size):
K full-size masks from the graph (the former path) against stride-4 masks with only the
filled slots upsampled on the host (Predictor's path now), next to the network alone.

Untrained weights with score_thr 0, so every one of the K slots is filled (the worst case
for the host side); K = the preset's max_per_img or the second argument. One 480x640 image.

    python benchmarks/bench_predictor.py solov2_light_r18 20
"""
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402

from solo_tf.config import load_config  # noqa: E402
from solo_tf.inference import InferenceModels, Predictor  # noqa: E402
from solo_tf.model import build_model  # noqa: E402


def median_s(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "solov2_light_r18"
    cfg = load_config(name)
    model = build_model(cfg)
    k = int(sys.argv[2]) if len(sys.argv) > 2 else cfg.postprocess.max_per_img
    post = dataclasses.replace(cfg.postprocess, score_thr=0.0, update_thr=0.0, max_per_img=k)
    image = np.random.RandomState(0).randint(0, 255, (480, 640, 3), np.uint8)
    canvas = cfg.model.canvas_for(480, 640)
    graph = model.graph_for(canvas)
    zeros = np.zeros((1, *canvas, 3), np.float32)
    network = median_s(lambda: graph.predict_on_batch(zeros))
    print(f"{name}, canvas {canvas[0]}x{canvas[1]}, K={k}; cpus={os.cpu_count()}: network alone {network * 1e3:.0f} ms")
    for full, label in ((True, "K full-size masks from the graph"), (False, "stride 4, filled slots upsampled on host")):
        predictor = Predictor(model, post)
        predictor.inference_models = InferenceModels(model, post, full_size_masks=full)
        total = median_s(lambda: predictor.predict([image]))
        found = len(predictor.predict([image])[0]["scores"])
        print(f"  {label:<42} {total * 1e3:6.0f} ms end to end, {(total - network) / total:4.0%} after the network "
              f"({found} detections)")


if __name__ == "__main__":
    main()
