"""Command line: ``solo-tf train|evaluate|predict|export|benchmark|demo|convert|info`` and ``solo-tf --version``.

Argument parsing, a call into :mod:`solo_tf.tasks`, printing, and errors mapped to exit
codes; nothing else lives here. Each command prints one JSON line on stdout (``info``
prints readable lines, or JSON with ``--json``); progress, tables and errors go to stderr.

Exit codes: 0 done; 1 bad input (a missing or unreadable file, bad data: the message names
it); 2 a config error (the message names the key) or a usage error; 130 interrupted.

A quiet start: TensorFlow's C++ start-up lines ("Could not find cuda drivers", "All log
messages before absl::InitializeLog() ...", oneDNN, cpu_feature_guard) are not shown unless
``--verbose``. ``TF_CPP_MIN_LOG_LEVEL`` silences what TensorFlow logs once running, but the
lines printed while its libraries load come from absl before anything can configure it, so
they are caught by pointing file descriptor 2 at a temporary file during the import (its
content is replayed if the import fails). Keras and TensorFlow are therefore imported only
after the arguments are parsed (``--help`` and ``--version`` need neither).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

from solo_tf import __version__
from solo_tf.console import log_line as _log


# --- a quiet start -------------------------------------------------------------------------------
def start_backend(verbose: bool = False) -> None:
    """Import Keras and TensorFlow; unless ``verbose``, with their native logging silenced.

    ``TF_CPP_MIN_LOG_LEVEL`` (3, unless the environment sets it) must be set before
    TensorFlow is first imported; the absl lines written during the import itself go to a
    temporary file instead of stderr. Python-side TensorFlow and absl loggers are set to
    ERROR. Does nothing to the descriptors when TensorFlow is already imported.
    """
    if verbose:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401  (the error mapping in main needs it on any backend)

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                import keras  # noqa: F401  (imports TensorFlow on the default backend)
                import tensorflow  # noqa: F401
            except BaseException:
                sys.stderr.flush()
                os.dup2(saved, 2)
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))  # say why it failed
                raise
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # absl-py comes with TensorFlow; without it there is nothing to quiet
        pass


def _print_json(obj) -> None:
    print(json.dumps(obj, default=str))


# --- commands ----------------------------------------------------------------------------------
def _cmd_train(args):
    from solo_tf import tasks
    from solo_tf.config import apply_overrides, load_config

    cfg = load_config(args.config)
    if args.set:
        cfg = apply_overrides(cfg, args.set)
    cfg.data.skip_bad = cfg.data.skip_bad or args.skip_bad
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    out = Path(args.out or f"runs/{cfg.name}")
    run = tasks.train(cfg, out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                      keep_checkpoints=args.keep_checkpoints, resume_from=args.resume, strategy=args.strategy)
    for log in run.bad_records:
        _log(f"solo-tf: {log.summary()}")
    losses = run.history.get("loss") or [None]  # a resumed run that was already complete trains no epoch
    _print_json({"model": str(run.model_path), "final_loss": losses[-1], "steps": run.steps})


def _add_export_arguments(p):
    # the formats are solo_tf.export's registry, which imports neither Keras nor TensorFlow
    # until a model is exported: `solo-tf --help` stays instant and quiet
    from solo_tf.export import FORMATS, quantizations

    p.add_argument("--model", required=True, help="a model.keras written by train or demo")
    p.add_argument("--format", required=True, choices=tuple(FORMATS),
                   help="; ".join(f"{name}: {fmt.help or fmt.title}" for name, fmt in FORMATS.items()))
    takers = ", ".join(f"{fmt.name} {'/'.join(fmt.quantizations[1:])}" for fmt in FORMATS.values()
                       if len(fmt.quantizations) > 1)
    p.add_argument("--quantize", default="none", choices=quantizations(),
                   help=f"none (float32) or a lower precision for the formats that take one: {takers}")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network canvas of the export, multiples of 32 (default: the model's)")
    p.add_argument("--out", help="SavedModel base path (writes OUT/<version>/) or the .tflite/.onnx file "
                                 "(default: beside the model)")
    p.add_argument("--calibration", type=int, default=100,
                   help="int8: number of training images to calibrate on (default 100)")
    p.add_argument("--config", help="training config (preset or YAML) for calibration data and "
                                    "post-processing (default: config.yaml beside the model)")
    p.add_argument("--raw-outputs", action="store_true", help="export the raw head logits, no decoder")
    p.add_argument("--full-size-masks", action="store_true",
                   help="full-resolution masks instead of stride-4 ones (larger outputs)")
    p.add_argument("--version", type=int, default=1, help="SavedModel version folder (default 1)")
    p.add_argument("--input-dtype", default="uint8", choices=("uint8", "float32"),
                   help="TFLite/ONNX input dtype (default uint8)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the export module's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")


def _cmd_export(args):
    from solo_tf.export import export_model

    result = export_model(
        args.model, args.format, args.out, quantize=args.quantize, image_size=args.image_size,
        calibration=args.calibration, config=args.config, raw_outputs=args.raw_outputs,
        full_size_masks=args.full_size_masks, version=args.version, input_dtype=args.input_dtype,
        overwrite=args.overwrite, opset=args.opset,
    )
    _print_json({"path": str(result.path), "format": result.format, "quantize": result.quantize,
                 "size_bytes": result.size_bytes, "files": [str(f) for f in result.files]})


def _cmd_benchmark(args):
    from solo_tf.benchmark import (
        benchmark_formats,
        default_out,
        format_table,
        table_notes,
    )

    out = Path(args.out) if args.out else default_out(args.model)
    rows = benchmark_formats(args.model, config=args.config, data=args.data, image_dir=args.image_dir,
                             formats=args.formats, num_images=args.images, runs=args.runs, threads=args.threads,
                             out=out, calibration=args.calibration)
    _log(format_table(rows))
    for note in table_notes(rows):
        _log(f"  {note}")
    _print_json({"csv": str(out / "benchmark.csv"), "json": str(out / "benchmark.json"),
                 "mask_ap": {r["format"]: r["mask_AP"] for r in rows},
                 "matches_keras": {r["format"]: r["matches_keras"] for r in rows}})


def _formats_arg(text):
    # solo_tf.benchmark imports neither Keras nor TensorFlow at module level: --help stays instant
    from solo_tf.benchmark import BenchmarkError, parse_formats

    try:
        return parse_formats(text)
    except BenchmarkError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_demo(args):
    from solo_tf import tasks

    _print_json(tasks.demo(args.out, steps=args.steps, minutes=args.minutes))


def _cmd_evaluate(args):
    from solo_tf import tasks
    from solo_tf.settings import resolve

    run = resolve(args.model, config=args.config)
    run.config.data.skip_bad = run.config.data.skip_bad or args.skip_bad
    out = Path(args.out) if args.out else Path(args.model).with_name("eval")
    metrics = tasks.evaluate(
        run.model, run.config, data=args.data, images=args.images, postprocess=run.postprocess,
        metrics_path=out / "metrics.json", results_path=out / "results.json", max_batches=args.max_batches,
        plots_dir=out, pictures=args.pictures,
    )
    _log(metrics["table"])
    _log(metrics["class_table"])
    for summary in metrics["bad_records"]:
        _log(f"solo-tf: {summary}")
    _print_json({k: v for k, v in metrics.items()
                 if k not in ("table", "class_table", "bad_records", "pr", "per_image", "confusion", "per_class")})


def _cmd_predict(args):
    from solo_tf import tasks

    res = tasks.predict(args.model, args.images, args.out, config=args.config, score_thr=args.score_thr)
    _print_json({"detections": len(res.results), "pictures": res.pictures, "results": str(res.results_path)})


def _cmd_convert(args):
    from solo_tf import tasks

    result = tasks.convert(args.images, args.masks, args.labels, args.bboxes, args.out,
                           trust_pickle=args.trust_pickle, skip_bad=args.skip_bad,
                           val_fraction=args.val_fraction, seed=args.seed)
    result = dict(result)
    bad = result.pop("bad", None)
    if bad is not None and bad.total:
        _log(f"solo-tf: {bad.summary()}")
    _print_json(dict(result, skipped=bad.total if bad is not None else 0))


def _cmd_info(args):
    from solo_tf import tasks

    info = tasks.info(args.model)
    if args.json:
        _print_json(info)
        return
    ids = "dataset ids" if info["dataset_ids_given"] else "ids (none saved: index + 1)"
    lines = [
        f"model       {info['model']}",
        f"variant     {info['variant']}",
        f"backbone    {info['backbone']}",
        f"input size  {info['input_size'][0]} x {info['input_size'][1]} (H x W)"
        + "".join(f"; {h} x {w} for the other orientation" for h, w in info["canvases"][1:]),
        f"grids       {', '.join(str(s) for s in info['num_grids'])}",
        f"parameters  {info['parameters']:,} ({info['trainable_parameters']:,} trainable)",
        f"file size   {_size(info['file_bytes'])} (weights {_size(info['weights_bytes'])})",
        f"classes     {len(info['classes'])}, index: name ({ids})",
    ]
    lines += [f"  {c['index']:>3}: {c['name']} ({c['dataset_id']})" for c in info["classes"]]
    print("\n".join(lines))


def _size(n):
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


# --- the parser --------------------------------------------------------------------------------
def _version() -> str:
    from importlib import metadata

    parts = []
    for dist in ("keras", "tensorflow", "jax"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return f"solo-tf {__version__} ({', '.join(parts + [f'python {sys.version.split()[0]}'])})"


def build_parser() -> argparse.ArgumentParser:
    # --verbose is accepted before or after the command. The sub-commands' flag has no
    # default (SUPPRESS), so it cannot reset a --verbose given before the command; it is a
    # separate action from the top-level one (parents share action objects, defaults too).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's native log lines (hidden by default)")

    # No abbreviated flags: `train --steps 20` would otherwise silently mean --steps-per-epoch.
    p = argparse.ArgumentParser(prog="solo-tf", description="SOLO / SOLOv2 instance segmentation for Keras 3",
                                allow_abbrev=False)
    p.add_argument("--verbose", "-v", action="store_true", default=False,
                   help="show TensorFlow's native log lines (hidden by default)")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, allow_abbrev=False)

    t = sub.add_parser("train", parents=[common], help="train a model from a config (preset name or YAML file)")
    t.add_argument("--config", required=True, help="preset name (e.g. shapes_demo) or path to a YAML file")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE", default=[],
                   help="override config fields, values as in YAML: --set train.base_lr=0.005 "
                        "model.image_size=[512,768] (checked like the YAML; an unknown key is an error)")
    t.add_argument("--epochs", type=int, help="override train.epochs")
    t.add_argument("--steps-per-epoch", type=int, help="override train.steps_per_epoch")
    t.add_argument("--batch-size", type=int, help="override train.batch_size")
    t.add_argument("--out", help="output directory (default runs/<config name>)")
    t.add_argument("--keep-checkpoints", type=int, metavar="N",
                   help="keep only the newest N epoch checkpoints (they hold the optimizer state; default: all)")
    t.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run from its checkpoints/epoch_NNN.weights.h5 (weights + optimizer state), "
                        "or 'latest': the newest checkpoint in OUT/checkpoints if any (restart a killed run with "
                        "the same command plus --resume latest)")
    t.add_argument("--strategy", default="none", choices=("none", "mirrored", "multiworker"),
                   help="data-parallel training: mirrored (this machine's devices) or multiworker (machines in "
                        "TF_CONFIG); on JAX either means keras.distribution.DataParallel. train.batch_size is the "
                        "global batch")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("demo", parents=[common],
                       help="train a small SOLOv2 on generated shapes, evaluate, draw pictures")
    d.add_argument("--out", default="solo_demo", help="output directory (default solo_demo)")
    d.add_argument("--minutes", type=float,
                   help="with --steps (or the default steps): a wall-clock cap; alone: train within this budget "
                        "(the result then depends on the machine's speed)")
    d.add_argument("--steps", type=int, help="train exactly this many steps (default 2500; the schedule is shaped to them)")
    d.set_defaults(func=_cmd_demo)

    e = sub.add_parser("evaluate", parents=[common], help="COCO mask AP of a trained model on a validation split")
    e.add_argument("--model", required=True, help="a model.keras written by train or demo")
    e.add_argument("--config", help="config for the data (default: config.yaml beside the model)")
    e.add_argument("--data", help="what to evaluate on: a COCO instances JSON, or a YAML config whose "
                                  "data section (validation split) is used")
    e.add_argument("--images", help="image folder of a --data JSON (default: images/ beside it, else its folder)")
    e.add_argument("--max-batches", type=int, help="stop after this many batches")
    e.add_argument("--out", help="folder for metrics.json, results.json and the pictures (PR curves, confusion "
                                 "matrix) (default: eval/ beside the model)")
    e.add_argument("--pictures", type=int, default=0, metavar="N",
                   help="also draw the N worst and N best images, ground truth beside prediction")
    e.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser("predict", parents=[common], help="instance masks for images: overlay PNGs + COCO results JSON")
    r.add_argument("--model", required=True)
    r.add_argument("images", nargs="+", help="image files (any size)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--config", help="config whose post-processing to use (default: the one saved with the model)")
    r.add_argument("--score-thr", type=float, default=0.3, help="drop detections below this score in the output")
    r.set_defaults(func=_cmd_predict)

    x = sub.add_parser("export", parents=[common], help="export the model with its decoder as a SavedModel "
                                                        "(TF Serving), TFLite (LiteRT), ONNX or a registered format")
    _add_export_arguments(x)
    x.set_defaults(func=_cmd_export)

    from solo_tf.benchmark import DEFAULT_FORMATS
    from solo_tf.benchmark import FORMATS as BENCH_FORMATS

    b = sub.add_parser("benchmark", parents=[common],
                       help="export to every format and run each on the same validation images: mask AP and its "
                            "change from Keras, size, latency, agreement with Keras (table, CSV, JSON)")
    b.add_argument("--model", required=True, help="a model.keras written by train or demo")
    b.add_argument("--config", help="config for the data and int8 calibration (default: config.yaml beside the model)")
    b.add_argument("--data", help="validate on this instead: a COCO instances JSON, or a YAML config whose "
                                  "data section (validation split) is used")
    b.add_argument("--image-dir", help="image folder of a --data JSON (default: images/ beside it, else its folder)")
    b.add_argument("--formats", type=_formats_arg, default=DEFAULT_FORMATS, metavar="F1,F2,...",
                   help=f"comma-separated, from {', '.join(BENCH_FORMATS)} (default {','.join(DEFAULT_FORMATS)}; "
                        "keras always runs: the reference)")
    b.add_argument("--images", type=int, default=50, metavar="N", help="the first N validation images (default 50)")
    b.add_argument("--runs", type=int, default=10, metavar="N",
                   help="latency: the median of N calls at batch 1 on one image (default 10)")
    b.add_argument("--threads", type=int, metavar="N", help="CPU threads of every runtime (default: all cores)")
    b.add_argument("--calibration", type=int, default=100, metavar="N",
                   help="int8: images to calibrate on (default 100; the config's training images, else the "
                        "validation images, as the table notes)")
    b.add_argument("--out", help="folder for the exports, benchmark.csv, benchmark.json and each format's COCO "
                                 "results (default: benchmark/ beside the model)")
    b.set_defaults(func=_cmd_benchmark)

    c = sub.add_parser("convert", parents=[common], help="convert the CIS680 h5/npy dataset to COCO JSON + PNG images")
    c.add_argument("--images", required=True, help="images h5 (key 'data', N x 3 x 300 x 400)")
    c.add_argument("--masks", required=True, help="masks h5 (key 'data', stored consecutively per image)")
    c.add_argument("--labels", required=True, help="labels npy (object array)")
    c.add_argument("--bboxes", help="bboxes npy (object array)")
    c.add_argument("--out", required=True, help="output folder: images/, annotations.json, train.json, val.json")
    c.add_argument("--trust-pickle", action="store_true",
                   help="allow loading object-array npy files (pickle can run code: only for files you trust)")
    c.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    c.add_argument("--val-fraction", type=float, default=0.2)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("info", parents=[common],
                       help="what a saved model is: variant, backbone, input size, classes, parameters, file size")
    i.add_argument("model", help="a .keras file written by solo-tf")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    i.set_defaults(func=_cmd_info)

    for sp in (t, e):
        sp.add_argument("--skip-bad", action="store_true",
                        help="skip and count bad data records instead of stopping at the first")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start_backend(args.verbose)

    import tensorflow as tf

    from solo_tf.config import ConfigError
    from solo_tf.data.errors import data_error_from

    try:
        args.func(args)
    except ConfigError as e:
        _log(f"solo-tf: config error: {e}")
        return 2
    except (FileNotFoundError, ValueError) as e:
        _log(f"solo-tf: {e}")
        return 1
    except tf.errors.OpError as e:  # a bad record met inside tf.data: its message names the file
        _log(f"solo-tf: {data_error_from(e) or e.message}")
        return 1
    except KeyboardInterrupt:
        _log("solo-tf: interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
