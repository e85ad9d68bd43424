"""Command line: ``solo-tf train|evaluate|predict|export|benchmark|demo|convert|info|models`` and ``solo-tf --version``.

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


def _add_postprocess_set(p):
    p.add_argument("--set", nargs="+", metavar="postprocess.FIELD=VALUE", default=[],
                   help="decoder settings for this run, over a --config's and the model's own: "
                        "--set postprocess.score_thr=0.3 postprocess.max_per_img=50")


def _add_export_arguments(p):
    # the formats are solo_tf.export's registry, which imports neither Keras nor TensorFlow
    # until a model is exported: `solo-tf --help` stays instant and quiet
    from solo_tf.export import FORMATS, quantizations

    p.add_argument("--model", required=True, help="a model.keras written by train or demo")
    _add_postprocess_set(p)
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
    p.add_argument("--calibration-images", nargs="+", metavar="DIR",
                   help="int8: calibrate on these images (folders, files or globs; up to --calibration of them) "
                        "instead of the training data, e.g. your own photos for a zoo model")
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
    from solo_tf.config import postprocess_overrides
    from solo_tf.export import export_model
    from solo_tf.export.calibration import images_from_paths

    calibration = args.calibration
    if args.calibration_images:
        if args.quantize != "int8":
            raise ValueError("--calibration-images applies to --quantize int8 only")
        calibration = images_from_paths(args.calibration_images, args.calibration)
    result = export_model(
        args.model, args.format, args.out, quantize=args.quantize, image_size=args.image_size,
        calibration=calibration, config=args.config, postprocess=postprocess_overrides(args.set) or None,
        raw_outputs=args.raw_outputs,
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
    from solo_tf.config import postprocess_overrides
    from solo_tf.settings import resolve

    run = resolve(args.model, config=args.config, postprocess=postprocess_overrides(args.set) or None)
    run.config.data.skip_bad = run.config.data.skip_bad or args.skip_bad
    out = Path(args.out) if args.out else Path(args.model).with_name("eval")
    metrics = tasks.evaluate(
        run.model, run.config, data=args.data, images=args.images, postprocess=run.postprocess,
        metrics_path=out / "metrics.json", results_path=out / "results.json", max_batches=args.max_batches,
        plots_dir=out, pictures=args.pictures, image_size=args.image_size,
    )
    _log(metrics["table"])
    _log(metrics["class_table"])
    for summary in metrics["bad_records"]:
        _log(f"solo-tf: {summary}")
    _print_json({k: v for k, v in metrics.items()
                 if k not in ("table", "class_table", "bad_records", "pr", "per_image", "confusion", "per_class")})


def _cmd_predict(args):
    from solo_tf import tasks
    from solo_tf.config import postprocess_overrides

    res = tasks.predict(args.model, args.sources, args.out, config=args.config,
                        postprocess=postprocess_overrides(args.set) or None, score_thr=args.score_thr,
                        batch_size=args.batch_size, save_masks=args.save_masks, overlays=not args.no_overlays,
                        image_size=args.image_size)
    _log(f"solo-tf: {res.report()}")
    _print_json({"detections": len(res.results), "pictures": res.pictures, "annotated_videos": res.videos,
                 "results": str(res.results_path), **{k: v for k, v in res.summary.items() if k != "detections"}})
    # Ctrl-C is how a camera or stream run ends; a run over files that it cut short did not finish
    return 130 if res.summary["interrupted"] and not res.summary["live"] else 0


# `convert` flags that set the field of the same meaning in the chosen source's section
_CONVERT_FIELDS = (("train", "train"), ("val", "val"), ("class_names", "class_names"), ("data", "dataset"),
                   ("train_split", "train_split"), ("val_split", "val_split"), ("ignore_value", "ignore_value"))


def _cmd_convert(args):
    from solo_tf import tasks
    from solo_tf.config import ConfigError, DataConfig, load_config

    if args.images or args.masks or args.labels or args.source == "cis680":  # its own files and layout
        missing = [f"--{k}" for k in ("images", "masks", "labels") if not getattr(args, k)]
        if missing or args.source not in (None, "cis680") or args.config:
            raise ConfigError(f"convert --from cis680 takes --images, --masks and --labels (missing: "
                              f"{', '.join(missing) or 'none'}) and neither another --from nor --config")
        result = tasks.convert_cis680(args.images, args.masks, args.labels, args.bboxes, args.out,
                                      trust_pickle=args.trust_pickle, skip_bad=args.skip_bad,
                                      val_fraction=0.2 if args.val_fraction is None else args.val_fraction,
                                      seed=args.seed or 0)
        bad = result.pop("bad", None)
        if bad is not None and bad.total:
            _log(f"solo-tf: {bad.summary()}")
        _print_json(dict(result, skipped=bad.total if bad is not None else 0))
        return
    if args.config:
        data = load_config(args.config).data
        if args.source not in (None, data.source):
            raise ConfigError(f"--from {args.source} but the config's data.source is {data.source!r}")
    elif args.source:
        data = DataConfig(source=args.source)
    else:
        raise ConfigError("convert needs --from FORMAT (or --config, or the CIS680 flags --images/--masks/--labels)")
    for flag in ("bboxes", "trust_pickle", "val_fraction", "seed"):
        if getattr(args, flag) not in (None, False):
            raise ConfigError(f"--{flag.replace('_', '-')} applies to --from cis680 only")
    section = getattr(data, data.source)
    for flag, field in _CONVERT_FIELDS:
        value = getattr(args, flag)
        if value is None:
            continue
        if not hasattr(section, field):
            raise ConfigError(f"--{flag.replace('_', '-')} does not apply to --from {data.source} "
                              f"(data.{data.source} has no {field!r})")
        setattr(section, field, value)
    data.validate()
    result = tasks.convert(data, args.out, skip_bad=args.skip_bad)
    logs = result.pop("bad")
    for log in logs:
        if log.total:
            _log(f"solo-tf: {log.summary()}")
    _print_json(dict(result, skipped=sum(log.total for log in logs)))


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


def _cmd_models(args):
    from solo_tf.zoo import entries

    rows = entries(supported=None if args.all else True)
    if args.json:
        _print_json([dict(e.row(), url=e.url, sha256=e.sha256, upstream=e.upstream, preset=e.preset) for e in rows])
        return
    cols = ("name", "variant", "backbone", "mask AP", "test scale", "size", "sha256", "host", "license")
    table = [{k: e.row()[k] for k in cols} for e in rows]
    for row in table:
        row["license"] = row["license"].split(",")[0].split(" (")[0]  # the full terms are below the table
    widths = {k: max(len(k), *(len(r[k]) for r in table)) for k in cols}
    lines = ["  ".join(k.ljust(widths[k]) for k in cols).rstrip()]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in cols).rstrip() for r in table]
    unsupported = [e for e in rows if not e.supported]
    if unsupported:
        lines += ["", "listed, not supported:"]
        lines += [f"  {e.name}: {e.unsupported}" for e in unsupported]
    lines += ["", "licenses:"] + [f"  {lic}" for lic in dict.fromkeys(e.license for e in rows)]
    lines += ["", "sha256: the full hash is pinned; 'sha256 prefix': the 8 digits of mmdetection's file name; "
                  "'none': no public page gives it.",
              "Use a name wherever a model path goes (--model NAME, Predictor(NAME), model.init_weights: NAME): "
              "the first use downloads and converts it"
              + ("" if args.all else "; --all lists the checkpoints solo-tf cannot run too") + "."]
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
    from solo_tf.data.catalog import source_names  # no TensorFlow: --help stays quick

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
    _add_postprocess_set(e)
    e.add_argument("--config", help="config for the data (default: config.yaml beside the model)")
    e.add_argument("--data", help="what to evaluate on: a COCO instances JSON, or a YAML config whose "
                                  "data section (validation split) is used")
    e.add_argument("--images", help="image folder of a --data JSON (default: images/ beside it, else its folder)")
    e.add_argument("--max-batches", type=int, help="stop after this many batches")
    e.add_argument("--out", help="folder for metrics.json, results.json and the pictures (PR curves, confusion "
                                 "matrix) (default: eval/ beside the model)")
    e.add_argument("--pictures", type=int, default=0, metavar="N",
                   help="also draw the N worst and N best images, ground truth beside prediction")
    e.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network canvas to evaluate at, multiples of 32 (default: the model's; a zoo model's is "
                        "its published test scale)")
    e.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser("predict", parents=[common],
                       help="instance masks for images, folders, globs, videos, a camera or a stream: overlays, "
                            "COCO results JSON, optional mask PNGs")
    r.add_argument("--model", required=True)
    r.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image files (any size), folders, globs ('shots/*.jpg'), video files (mp4, avi, mov, mkv, "
                        "...), a camera index (0) or a stream URL (rtsp://, http://); a camera or stream is read "
                        "until it ends or Ctrl-C")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--config", help="config whose post-processing to use (default: the one saved with the model)")
    r.add_argument("--score-thr", type=float, default=0.3, help="drop detections below this score in the output")
    r.add_argument("--batch-size", type=int,
                   help="frames per forward pass (default: 16 canvases of 128x128 worth of pixels, 1 to 16 frames)")
    r.add_argument("--save-masks", action="store_true",
                   help="also write one PNG per instance: OUT/masks/<stem>[_f<frame>]_<k>_<label>.png")
    r.add_argument("--no-overlays", action="store_true",
                   help="write no overlay PNGs or annotated videos (predictions.json and masks only; faster)")
    r.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network canvas, multiples of 32 (default: the model's; a zoo model's is its published "
                        "test scale)")
    _add_postprocess_set(r)
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

    c = sub.add_parser("convert", parents=[common],
                       help="convert a dataset (LabelMe, YOLO-seg, instance PNGs, CIS680) to COCO JSON + images")
    c.add_argument("--from", dest="source", choices=source_names(),
                   help="the dataset's format: labelme, yolo, masks, cis680 (default: cis680 when --images is given)")
    c.add_argument("--to", default="coco", choices=("coco",), help="the output format (COCO instances JSON)")
    c.add_argument("--out", required=True, help="output folder: train.json, val.json and images/ (CIS680: "
                                                "annotations.json too)")
    c.add_argument("--config", help="convert this config's data section (its data.source) instead of the flags")
    c.add_argument("--train", help="labelme, masks: the training folder")
    c.add_argument("--val", help="labelme, masks: the validation folder")
    c.add_argument("--class-names", nargs="+", help="labelme: the class order (default: the labels, sorted); "
                                                    "masks: the names of class values 1, 2, ...")
    c.add_argument("--data", help="yolo: the dataset YAML (names, path, train, val)")
    c.add_argument("--train-split", help="yolo: the YAML's training split (default train)")
    c.add_argument("--val-split", help="yolo: the YAML's validation split (default val)")
    c.add_argument("--ignore-value", type=int, help="masks: the value of ignore regions (default 255)")
    c.add_argument("--images", help="cis680: images h5 (key 'data', N x 3 x 300 x 400)")
    c.add_argument("--masks", help="cis680: masks h5 (key 'data', stored consecutively per image)")
    c.add_argument("--labels", help="cis680: labels npy (object array)")
    c.add_argument("--bboxes", help="cis680: bboxes npy (object array)")
    c.add_argument("--trust-pickle", action="store_true",
                   help="cis680: allow loading object-array npy files (pickle can run code: only for files you trust)")
    c.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    c.add_argument("--val-fraction", type=float, help="cis680: the validation share (default 0.2)")
    c.add_argument("--seed", type=int, help="cis680: the split's seed (default 0)")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("info", parents=[common],
                       help="what a saved model is: variant, backbone, input size, classes, parameters, file size")
    i.add_argument("model", help="a .keras file written by solo-tf")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    i.set_defaults(func=_cmd_info)

    m = sub.add_parser("models", parents=[common],
                       help="the published COCO checkpoints solo-tf runs by name: AP, test scale, size, host, license")
    m.add_argument("--all", action="store_true", help="list the checkpoints solo-tf cannot run too, with the reason")
    m.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    m.set_defaults(func=_cmd_models)

    for sp in (e, r, x, i):  # a zoo name wherever a model file goes (main() resolves it)
        for action in sp._actions:
            if action.dest == "model":
                action.help = (action.help or "a .keras file written by solo-tf") + (
                    ", or a zoo name (solo-tf models), downloaded and converted on first use")

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
    from solo_tf.zoo import ZooDownloadError

    try:
        if getattr(args, "model", None) is not None:  # predict, evaluate, export, info
            from solo_tf.zoo import resolve_model

            args.model = str(resolve_model(args.model))  # a zoo name: its cached .keras
        code = args.func(args)
    except ConfigError as e:
        _log(f"solo-tf: config error: {e}")
        return 2
    except (FileNotFoundError, ValueError, ZooDownloadError) as e:
        _log(f"solo-tf: {e}")
        return 1
    except tf.errors.OpError as e:  # a bad record met inside tf.data: its message names the file
        _log(f"solo-tf: {data_error_from(e) or e.message}")
        return 1
    except KeyboardInterrupt:
        _log("solo-tf: interrupted")
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
