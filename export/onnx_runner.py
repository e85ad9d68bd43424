"""Run an exported ``.onnx`` with ONNX Runtime: images in, overlay PNG + JSON out.

    python export/onnx_runner.py model.onnx photo.jpg [more.jpg ...] --out results/

Needs only ``onnxruntime``, numpy and Pillow (no TensorFlow, no solo_tf). The images are
letterboxed into the model's fixed canvas on the host and run as one batch (the graph's
batch axis is dynamic); the stride-4 masks are pasted back into each image. Class names come
from ``model.onnx.json`` beside the model (or the model's own ``solo_export`` metadata).
Writes ``<stem>_overlay.png`` and ``<stem>.json`` per image and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from solo_client import (instances_from_outputs, letterbox, load_metadata, read_image, report,  # noqa: E402
                         runtime_parser, save_image_results)

_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class OnnxModel:
    """An ``.onnx`` export: ``model(canvases)`` -> dict of outputs (B, ...)."""

    def __init__(self, path, threads=2):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.input_dtype = _DTYPES[inp.type]
        self.canvas = tuple(int(v) for v in inp.shape[1:3])
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map.get("solo_export")
        self.metadata = load_metadata(path) or (json.loads(meta) if meta else {})

    def __call__(self, canvases):
        x = np.asarray(canvases).astype(self.input_dtype)
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))


def run(model_path, image_paths, out_dir, threads=2, score_thr=0.0):
    model = OnnxModel(model_path, threads)
    meta = model.metadata
    images = [read_image(p) for p in image_paths]  # fail on a bad file before any work
    boxed = [letterbox(im, model.canvas) for im in images]
    start = time.perf_counter()
    outputs = model(np.stack([b[0] for b in boxed]))
    elapsed = (time.perf_counter() - start) * 1000
    written = []
    for i, (path, image, (_, scale, offset)) in enumerate(zip(image_paths, images, boxed)):
        found = instances_from_outputs(outputs, i, image.shape[:2], scale, offset, boxes_in="canvas",
                                       mask_stride=int(meta.get("mask_stride", 4)),
                                       class_names=meta.get("class_names"), category_ids=meta.get("category_ids"))
        written.append(save_image_results(image, path, found, out_dir, score_thr,
                                          extra={"model": str(model_path), "runtime": "onnxruntime"}))
    return {"results": written, "batch_ms": round(elapsed, 2)}


def main(argv=None):
    args = runtime_parser(__doc__.splitlines()[0], "an exported .onnx").parse_args(argv)
    return report("onnx_runner", lambda: run(args.model, args.images, args.out, args.threads, args.score_thr))


if __name__ == "__main__":
    sys.exit(main())
