"""Run an exported ``.tflite`` with the LiteRT interpreter: images in, overlay PNG + JSON out.

    python export/litert_runner.py model.tflite photo.jpg [more.jpg ...] --out results/

Needs only ``ai-edge-litert``, numpy and Pillow (no TensorFlow, no solo_tf). Each image is
letterboxed into the model's fixed canvas on the host, the graph (network + decoder with
Matrix NMS, builtin ops only) runs, and the stride-4 masks are pasted back into the image.
Class names come from ``model.tflite.json`` beside the model when it is there.
Writes ``<stem>_overlay.png`` and ``<stem>.json`` (instances with COCO RLE masks) per image
and prints one JSON line: the files and the per-image invoke time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from solo_client import (instances_from_outputs, letterbox, load_metadata, read_image, report,  # noqa: E402
                         runtime_parser, save_image_results)


class LiteRTModel:
    """A ``.tflite`` export: ``model(canvas)`` -> dict of outputs with a batch axis of 1."""

    def __init__(self, path, threads=2):
        from ai_edge_litert.interpreter import Interpreter

        if not Path(path).is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        self.interpreter = Interpreter(model_path=str(path), num_threads=int(threads))
        self.runner = self.interpreter.get_signature_runner()
        (name, spec), = self.runner.get_input_details().items()
        self.input_name = name
        self.input_dtype = spec["dtype"]
        self.canvas = tuple(int(v) for v in spec["shape"][1:3])
        self.metadata = load_metadata(path) or {}

    def __call__(self, canvas):
        x = np.asarray(canvas)[None].astype(self.input_dtype)
        return self.runner(**{self.input_name: x})


def run(model_path, image_paths, out_dir, threads=2, score_thr=0.0):
    model = LiteRTModel(model_path, threads)
    meta = model.metadata
    stride = int(meta.get("mask_stride", 4))
    written, times = [], []
    for path in image_paths:
        image = read_image(path)
        canvas, scale, offset = letterbox(image, model.canvas)
        start = time.perf_counter()
        outputs = model(canvas)
        times.append((time.perf_counter() - start) * 1000)
        found = instances_from_outputs(outputs, 0, image.shape[:2], scale, offset, boxes_in="canvas",
                                       mask_stride=stride, class_names=meta.get("class_names"),
                                       category_ids=meta.get("category_ids"))
        written.append(save_image_results(image, path, found, out_dir, score_thr,
                                          extra={"model": str(model_path), "runtime": "litert"}))
    return {"results": written, "invoke_ms": [round(t, 2) for t in times]}


def main(argv=None):
    args = runtime_parser(__doc__.splitlines()[0], "an exported .tflite").parse_args(argv)
    return report("litert_runner", lambda: run(args.model, args.images, args.out, args.threads, args.score_thr))


if __name__ == "__main__":
    sys.exit(main())
