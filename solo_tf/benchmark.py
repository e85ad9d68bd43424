"""One benchmark across formats: is the exported (or int8) model still as good as the Keras one?

:func:`benchmark_formats` (``solo-tf benchmark``) exports a trained model to each format
asked for (Keras itself, SavedModel, TFLite fp32 / fp16 / dynamic / int8, ONNX) through
:func:`solo_tf.export.export_model`, runs every one on the SAME validation images and
reports, per format: COCO mask AP (and AP50, box AP) measured on that format's own outputs,
the AP minus the Keras AP, the file size, the latency (median of ``runs`` calls at batch 1
on one image, with the threads named), and whether its detections matched Keras's
(:mod:`solo_tf.parity`). It writes ``benchmark.csv``, ``benchmark.json`` and each format's
COCO results (``results_<format>.json``) to ``out``.

Only the graph differs between the rows:

* the images: the validation split of the run's data (:func:`solo_tf.tasks.evaluation_data`,
  as ``solo-tf evaluate`` takes it), each letterboxed onto the model's canvas
  (:func:`solo_tf.preprocess.letterbox`, the pipeline's resize) and rounded to uint8 once;
  every format gets those same canvases (Keras as float32 of the same values, the
  SavedModel's ``serving_default`` the canvas itself, whose in-graph letterbox is then the
  identity);
* the detections: every format's stride-4 masks binarised at ``postprocess.mask_thr`` (in
  the exported graphs; on the host for Keras, as the graphs do it) and its classes mapped
  back to 0-based indices, then mapped to each image by the one host-side path,
  :func:`solo_tf.inference.instances_from_detections` (through
  :func:`solo_tf.evaluation.evaluate_dataset`, the binary masks cut at 0.5 after upsampling),
  and scored by the same COCOeval against the same ground truth.

So the Keras row can differ from ``solo-tf evaluate`` (float canvases, soft masks) in the
last digit; the rows differ from each other only by their graphs.

int8 calibrates on the training split of the run's config (``--config``, else
``config.yaml`` beside the model); a model with no training data (only the defaults, or a
config without a training split) calibrates on the benchmark's own validation images, and
the row's ``note`` says so (its AP is then slightly flattered).

Host side: TensorFlow, LiteRT and ONNX Runtime are imported when a format needs them.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
import time
from pathlib import Path

import numpy as np

from solo_tf.console import log_line


class BenchmarkError(ValueError):
    """A benchmark cannot run as asked; the message says why (naming the format or option)."""


# name -> (export format, quantize): the formats the benchmark can both export and run
FORMATS = {
    "keras": (None, "none"),
    "saved_model": ("saved_model", "none"),
    "tflite": ("tflite", "none"),
    "tflite_fp16": ("tflite", "fp16"),
    "tflite_dynamic": ("tflite", "dynamic"),
    "tflite_int8": ("tflite", "int8"),
    "onnx": ("onnx", "none"),
}
DEFAULT_FORMATS = ("keras", "saved_model", "tflite", "tflite_fp16", "tflite_int8", "onnx")

# "matched Keras": every detection has a partner of the same class, scores within MATCH_SCORE_TOL
# and mask IoU at least MATCH_MIN_IOU (what the export tests assert for the float formats)
MATCH_SCORE_TOL = 1e-3
MATCH_MIN_IOU = 0.99

COLUMNS = ("format", "runtime", "threads", "mask_AP", "mask_AP50", "AP_delta", "box_AP", "size_bytes", "latency_ms",
           "matches_keras", "min_mask_iou", "max_score_diff", "unmatched", "mean_mask_iou", "recall50", "detections",
           "images", "export_s", "path", "note")


def parse_formats(formats) -> tuple:
    """``formats`` (a comma-separated string or a sequence of names) -> the names, checked,
    duplicates dropped, ``keras`` first (it is always run: the reference).

    Raises:
        BenchmarkError: an unknown name (named, with the choices) or an empty list.
    """
    names = [s.strip() for s in formats.split(",")] if isinstance(formats, str) else [str(s) for s in formats]
    names = [n for n in names if n]
    if not names:
        raise BenchmarkError(f"no format given; choose from {', '.join(FORMATS)}")
    for name in names:
        if name not in FORMATS:
            raise BenchmarkError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(["keras", *names]))


def default_out(model_path) -> Path:
    """Where :func:`benchmark_formats` writes by default: ``benchmark/`` beside the model file."""
    return Path(model_path).with_name("benchmark")


def benchmark_formats(model, *, config=None, data=None, image_dir=None, formats=DEFAULT_FORMATS, num_images=50,
                      runs=10, threads=None, out=None, calibration=100, postprocess=None, log=log_line) -> list:
    """Export ``model`` to each format, run each on the same validation images, and score them.

    Args:
        model: a :class:`solo_tf.model.SOLO` or the path of its ``.keras`` file.
        config, postprocess: what the user named for this run (:func:`solo_tf.settings.resolve`):
            the data to validate (and calibrate) on and the decoder settings.
        data, image_dir: validate on this instead (:func:`solo_tf.tasks.with_eval_data`: a
            COCO instances JSON with its image folder, or a config whose data is used).
        formats: names in :data:`FORMATS` (a list or a comma-separated string); ``keras``
            is always run first (the reference).
        num_images: the first this many validation images.
        runs: latency = the median of this many calls at batch 1 on the first image.
        threads: CPU threads for every runtime (default: the machine's cores). TensorFlow's
            can only be set before it first runs; when it already has, its own count is used
            and named.
        out: folder for the exports and reports (default ``benchmark/`` beside the model).
        calibration: int8: the number of images to calibrate on.
        log: progress lines (None: quiet).

    Returns:
        one dict per format (keys :data:`COLUMNS`): ``mask_AP`` / ``mask_AP50`` / ``box_AP``
        (0..1, COCOeval on that format's own outputs), ``AP_delta`` (mask AP minus Keras's),
        ``size_bytes``, ``latency_ms``, ``threads``, ``matches_keras`` (``reference``,
        ``yes``, or ``no: ...`` with the worst mask IoU and score difference),
        ``min_mask_iou`` / ``max_score_diff`` (each of Keras's detections paired with the
        format's most-overlapping detection of its class, whatever the scores), ``unmatched``
        (Keras's detections with none of their class), ``mean_mask_iou`` /
        ``recall50`` (:func:`solo_tf.parity.mask_agreement`), ``detections``, ``images``,
        ``export_s``, ``path``, ``note``. ``out`` gets ``benchmark.csv`` (these rows),
        ``benchmark.json`` (the rows and the run's settings) and ``results_<format>.json``.

    Raises:
        BenchmarkError (a ValueError): a bad format name or option; ExportError: a format
        that cannot be written; FileNotFoundError: a missing model or data file.
    """
    names = parse_formats(formats)
    for what, value in (("num_images", num_images), ("runs", runs), ("calibration", calibration)):
        _positive(what, value)
    threads = int(threads) if threads is not None else (os.cpu_count() or 1)
    _positive("threads", threads)
    log = log or (lambda msg: None)
    tf_threads = _set_tf_threads(threads)  # before TensorFlow first runs (loading the model does)

    from solo_tf.settings import resolve
    from solo_tf.tasks import with_eval_data

    run = resolve(model, config=config, postprocess=postprocess)
    cfg = with_eval_data(run.config, data, image_dir) if data is not None else run.config
    if out is None:
        if run.model_path is None:
            raise BenchmarkError("out is required when benchmarking a model object (no .keras path to put it beside)")
        out = default_out(run.model_path)
    out = Path(out)
    canvas = tuple(int(v) for v in run.model.canvases[0])
    samples, coco_gt = _validation_images(cfg, int(num_images), canvas)
    log(f"[benchmark] {len(samples)} validation images on the {canvas[0]}x{canvas[1]} canvas; "
        f"formats {', '.join(names)}; {threads} threads")

    reference = None
    rows = []
    for name in names:
        fmt, quantize = FORMATS[name]
        note = ""
        start = time.perf_counter()
        if fmt is None:
            path, size = _keras_file(run, out)
        else:
            log(f"[benchmark] exporting {name}")
            cal = None
            if quantize == "int8":
                cal, note = _calibration_images(run, cfg, int(calibration), samples)
            result = _export(run, fmt, quantize, out, cal)
            path, size = result.path, result.size_bytes
        export_s = time.perf_counter() - start
        runner = _runner(name, run, path, threads, tf_threads)
        log(f"[benchmark] running {name} ({runner.runtime}) on {len(samples)} images")
        outputs = [runner.canonical(runner(s["canvas"])) for s in samples]
        latency = _latency(runner, samples[0]["canvas"], int(runs))
        runner.close()
        report = _score(outputs, samples, coco_gt, cfg, run.postprocess, out / f"results_{name}.json")
        row = {
            "format": name, "runtime": runner.runtime, "threads": runner.threads,
            "mask_AP": report["AP"], "mask_AP50": report["AP50"], "box_AP": report["box_AP"],
            "AP_delta": 0.0 if reference is None else report["AP"] - rows[0]["mask_AP"],
            "size_bytes": int(size), "latency_ms": latency, "detections": int(report["num_detections"]),
            "images": len(samples), "export_s": round(export_s, 2), "path": str(path),
            "note": "; ".join(n for n in (note, runner.note) if n),
        }
        if reference is None:
            reference = outputs
            row.update(matches_keras="reference", min_mask_iou=1.0, max_score_diff=0.0, unmatched=0,
                       mean_mask_iou=1.0, recall50=1.0)
        else:
            row.update(_agreement(reference, outputs, run.postprocess))
        rows.append(row)
        log(f"[benchmark] {name}: mask AP {100 * row['mask_AP']:.1f}, {row['latency_ms']:.1f} ms, "
            f"matches keras: {row['matches_keras']}")
    _write_reports(out, rows, run, cfg, names, len(samples), runs, threads)
    return rows


def format_table(rows) -> str:
    """The rows as a table for people: AP in percent, sizes in KiB / MiB."""
    header = ("format", "mask AP", "vs keras", "box AP", "size", "latency", "threads", "matches keras")
    cells = [header]
    for r in rows:
        cells.append((
            r["format"], f"{100 * r['mask_AP']:.1f}",
            "-" if r["matches_keras"] == "reference" else f"{100 * r['AP_delta']:+.2f}",
            f"{100 * r['box_AP']:.1f}", _size(r["size_bytes"]), f"{r['latency_ms']:.1f} ms", str(r["threads"]),
            r["matches_keras"],
        ))
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    left = {0, len(header) - 1}
    lines = ["  ".join(c[i].ljust(widths[i]) if i in left else c[i].rjust(widths[i]) for i in range(len(header)))
             .rstrip() for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def table_notes(rows) -> list:
    """The rows' notes, one line each (``format: note``)."""
    return [f"{r['format']}: {r['note']}" for r in rows if r["note"]]


# =============================================================================================
# data
# =============================================================================================
def _validation_images(cfg, n, canvas):
    """The first ``n`` validation images, each letterboxed onto ``canvas`` and rounded to
    uint8, with the COCO ground truth: ``([{image_id, canvas, valid_size, orig_size}], coco_gt)``."""
    from keras import ops

    from solo_tf.preprocess import letterbox
    from solo_tf.tasks import evaluation_data

    src, _, coco_gt = evaluation_data(cfg, max_images=n)
    samples = []
    for record in src.records.take(n).as_numpy_iterator():
        image = np.asarray(record["image"])
        boxed = letterbox(image, canvas)
        samples.append({
            "image_id": int(record["image_id"]),
            "canvas": np.clip(np.round(ops.convert_to_numpy(boxed.canvas)), 0, 255).astype(np.uint8),
            "valid_size": tuple(int(v) for v in boxed.valid_size),
            "orig_size": tuple(int(v) for v in image.shape[:2]),
        })
    if not samples:
        raise BenchmarkError(f"data.source={cfg.data.source!r}: the validation split gave no images")
    return samples, coco_gt


def _calibration_images(run, cfg, n, samples):
    """int8 calibration images and the note that says where they came from: the training split
    of the run's config, else (no training data) the validation images benchmarked."""
    from solo_tf.data.sources import load_source

    if run.config_source != "defaults":
        src = load_source(cfg, "train")
        if src is not None and src.num_records > 0:
            images = [np.asarray(r["image"]) for r in src.records.take(n).as_numpy_iterator()]
            where = "--config" if run.config_source == "given" else "config.yaml beside the model"
            return images, f"int8 calibrated on {len(images)} training images ({cfg.data.source}, from {where})"
        why = f"the config's data ({cfg.data.source}) has no training split"
    else:
        why = "the model has no training data (no --config and no config.yaml beside it)"
    chosen = samples[:n]
    images = [s["canvas"][: s["valid_size"][0], : s["valid_size"][1]] for s in chosen]
    return images, (f"int8 calibrated on {len(images)} of the validation images benchmarked: {why}; "
                    "its AP is slightly flattered")


# =============================================================================================
# exporting and running
# =============================================================================================
def _keras_file(run, out):
    if run.model_path is not None:
        return run.model_path, run.model_path.stat().st_size
    from solo_tf.saving import save_model

    path = out / "model.keras"
    save_model(run.model, path)
    return path, path.stat().st_size


def _export(run, fmt, quantize, out, calibration):
    from solo_tf.export import export_model

    stem = run.model_path.stem if run.model_path is not None else "model"
    if fmt == "saved_model":
        dest = out / "saved_model"
    else:
        from solo_tf.export import FORMATS as EXPORT_FORMATS

        dest = out / f"{stem}{'' if quantize == 'none' else f'_{quantize}'}{EXPORT_FORMATS[fmt].suffix}"
    # the resolved settings are handed over whole: the export decodes exactly as the Keras row
    return export_model(run.model, fmt, dest, quantize=quantize, postprocess=run.postprocess,
                        calibration=calibration if calibration is not None else 100, overwrite=True)


_ONNX_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class _Runner:
    """One format, loaded: ``runner(canvas uint8 (H, W, 3))`` -> its raw outputs (batch 1);
    :meth:`canonical` -> one image's filled slots in one form for every format."""

    runtime = ""
    threads = ""
    note = ""
    classes_are_ids = True  # exported graphs report the dataset's category ids

    def __init__(self, run):
        self.mask_thr = float(run.postprocess.mask_thr)
        ids = run.model.labels_config.category_ids
        self.index_of = {int(cid): c for c, cid in enumerate(ids)} if ids else None

    def close(self):
        pass

    def canonical(self, outputs):
        """Raw outputs of one image -> ``detection_masks`` (1, n, H/4, W/4) uint8 0/1,
        ``detection_scores`` (1, n) float32, ``detection_classes`` (1, n) int32 0-based,
        ``num_detections`` (1,): the filled slots only."""
        n = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        masks = np.asarray(outputs["detection_masks"])[0, :n]
        if masks.dtype.kind == "f":  # Keras's soft masks, binarised as the exported graphs do
            masks = masks > self.mask_thr
        classes = np.asarray(outputs["detection_classes"]).reshape(-1)[:n].astype(np.int64)
        if self.classes_are_ids and self.index_of is not None:
            classes = np.asarray([self.index_of.get(int(c), -1) for c in classes], np.int64)
        return {
            "detection_masks": masks.astype(np.uint8)[None],
            "detection_scores": np.asarray(outputs["detection_scores"], np.float32).reshape(-1)[:n][None],
            "detection_classes": classes.astype(np.int32)[None],
            "num_detections": np.asarray([n], np.int32),
        }


class _KerasRunner(_Runner):
    classes_are_ids = False  # the Keras decoder reports 0-based classes

    def __init__(self, run, tf_threads):
        super().__init__(run)
        import keras

        from solo_tf.inference import InferenceModels

        self.models = InferenceModels(run.model, run.postprocess)  # stride-4 masks, as the exports
        self.runtime = f"Keras {keras.__version__} ({keras.backend.backend()})"
        self.threads, self.note = tf_threads

    def __call__(self, canvas):
        return self.models.predict_on_batch(canvas[None].astype(np.float32))


class _SavedModelRunner(_Runner):
    def __init__(self, run, path, tf_threads):
        super().__init__(run)
        import tensorflow as tf

        self.tf = tf
        self.fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        self.runtime = f"TensorFlow {tf.__version__}"
        self.threads, self.note = tf_threads

    def __call__(self, canvas):
        return {k: v.numpy() for k, v in self.fn(images=self.tf.constant(canvas[None])).items()}


class _LiteRTRunner(_Runner):
    def __init__(self, run, path, threads):
        super().__init__(run)
        from importlib import metadata

        from ai_edge_litert.interpreter import Interpreter

        self.runner = Interpreter(model_path=str(path), num_threads=int(threads)).get_signature_runner()
        ((self.input_name, spec),) = self.runner.get_input_details().items()
        self.input_dtype = spec["dtype"]
        self.runtime = f"LiteRT {metadata.version('ai-edge-litert')}"
        self.threads = str(threads)

    def __call__(self, canvas):
        return self.runner(**{self.input_name: canvas[None].astype(self.input_dtype)})


class _OnnxRunner(_Runner):

    def __init__(self, run, path, threads):
        super().__init__(run)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        self.input_name, self.input_dtype = inp.name, _ONNX_DTYPES[inp.type]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.runtime = f"ONNX Runtime {ort.__version__}"
        self.threads = str(threads)

    def __call__(self, canvas):
        x = canvas[None].astype(self.input_dtype)
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))


def _runner(name, run, path, threads, tf_threads) -> _Runner:
    fmt = FORMATS[name][0]
    if fmt is None:
        return _KerasRunner(run, tf_threads)
    if fmt == "saved_model":
        return _SavedModelRunner(run, path, tf_threads)
    if fmt == "tflite":
        return _LiteRTRunner(run, path, threads)
    return _OnnxRunner(run, path, threads)


def _set_tf_threads(threads):
    """Give TensorFlow ``threads`` intra-op threads (one inter-op) if it has not run yet.
    Returns (the threads it uses, as a string; a note when they are not ``threads``)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return str(threads), ""
    except RuntimeError:  # the context is initialised: threads are fixed for this process
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current == threads:
            return str(threads), ""
        used = str(current) if current else f"{os.cpu_count()}"
        why = "set before" if current else "TensorFlow's default: all cores; it had already run"
        return used, f"TensorFlow threads could not be set to {threads} ({why})"


def _latency(runner, canvas, runs) -> float:
    """Median wall time (ms) of ``runs`` calls at batch 1, after two warm-up calls."""
    for _ in range(2):
        runner(canvas)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(canvas)
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 3)


# =============================================================================================
# scoring and agreement
# =============================================================================================
class _Replay:
    """Stands in for a model in :func:`solo_tf.evaluation.evaluate_dataset`: returns one
    format's recorded outputs, image after image."""

    def __init__(self, outputs):
        self._outputs = iter(outputs)

    def predict_on_batch(self, images):
        return next(self._outputs)


def _score(outputs, samples, coco_gt, cfg, post, results_path):
    """COCO mask / box AP of one format's outputs: the path ``solo-tf evaluate`` takes, the
    binary stride-4 masks upsampled and cut at 0.5."""
    from solo_tf.evaluation import evaluate_dataset

    batches = [(s["canvas"][None], None, {"image_id": np.asarray([s["image_id"]]),
                                          "valid_size": np.asarray([s["valid_size"]]),
                                          "orig_size": np.asarray([s["orig_size"]])}) for s in samples]
    binary = dataclasses.replace(post, mask_thr=0.5)
    return evaluate_dataset(_Replay(outputs), batches, cfg.model, binary, category_ids=cfg.labels.category_ids,
                            class_names=cfg.labels.names(cfg.model.num_classes), coco_gt=coco_gt,
                            results_path=results_path)


def _agreement(reference, outputs, post) -> dict:
    """How one format's detections compare with Keras's, image by image (:mod:`solo_tf.parity`).

    ``matches_keras`` is ``yes`` when :func:`~solo_tf.parity.compare_detections` pairs every
    detection one to one (same class, scores within :data:`MATCH_SCORE_TOL`, mask IoU at
    least :data:`MATCH_MIN_IOU`; a detection on the decoder's keep threshold may be missing).
    Otherwise it names the worst of Keras's detections: each is paired with the other
    format's detection of its class that overlaps it most, whatever the scores (not one to
    one: duplicates of one object in either output do not count as misses), and the lowest
    such mask IoU (with the mean, :func:`~solo_tf.parity.mask_agreement`) and the largest
    score difference are given, with the detections that have no partner of their class at
    all. Detections scored below the decoder's keep threshold (``update_thr``) plus
    :data:`MATCH_SCORE_TOL` are left out: they may fall either side of it."""
    from solo_tf.parity import compare_detections, mask_agreement, mask_iou

    def one(d):
        return {k: v[0] for k, v in d.items()}

    refs, others = [one(d) for d in reference], [one(d) for d in outputs]
    strict = [compare_detections(r, o, score_tol=MATCH_SCORE_TOL, borderline=post.update_thr)
              for r, o in zip(refs, others)]
    floor = post.update_thr + MATCH_SCORE_TOL  # below it a detection may be missing on the other side
    agree = mask_agreement(refs, others, min_score=floor)
    ious, diffs, unpaired = [1.0], [0.0], 0
    for ref, other in zip(refs, others):
        for mask, score, cls in zip(ref["detection_masks"], ref["detection_scores"], ref["detection_classes"]):
            if score < floor:
                continue
            partners = [(mask_iou(mask, m), abs(float(s) - float(score)))
                        for m, s, c in zip(other["detection_masks"], other["detection_scores"],
                                           other["detection_classes"]) if c == cls]
            if not partners:
                unpaired += 1
                continue
            iou, diff = max(partners, key=lambda p: (p[0], -p[1]))
            ious.append(iou)
            diffs.append(diff)
    same = all(r["unmatched"] == 0 and r["min_mask_iou"] >= MATCH_MIN_IOU for r in strict)
    verdict = "yes"
    if not same:
        verdict = (f"no: worst mask IoU {min(ious):.2f} (mean {agree['mean_iou']:.2f}), "
                   f"max score diff {max(diffs):.3f}")
        if unpaired:
            verdict += f", {unpaired} without a partner"
    return {"matches_keras": verdict, "min_mask_iou": min(ious), "max_score_diff": max(diffs), "unmatched": unpaired,
            "mean_mask_iou": agree["mean_iou"], "recall50": agree["recall"]}


# =============================================================================================
# reports
# =============================================================================================
def _write_reports(out, rows, run, cfg, names, num_images, runs, threads):
    from solo_tf.io import atomic_path, write_json

    with atomic_path(out / "benchmark.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    write_json(out / "benchmark.json", {
        "model": str(run.model_path) if run.model_path is not None else None,
        "canvas": [int(v) for v in run.model.canvases[0]],
        "data": {"source": cfg.data.source, "config": run.config_source},
        "images": num_images, "runs": runs, "threads": threads, "formats": list(names),
        "postprocess": dataclasses.asdict(run.postprocess),
        "rows": rows,
    }, indent=2)


def _positive(what, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise BenchmarkError(f"{what} must be a positive integer, got {value!r}")


def _size(n):
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
