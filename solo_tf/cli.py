"""Command line: ``solo-tf train|evaluate|predict|demo|convert``.

Each sub-command is a thin wrapper over a library function of the same name here, so
scripts can call them too (``from solo_tf.cli import run_train``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def _atomic_save_model(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _verbose():
    return 1 if sys.stdout.isatty() else 2


# --------------------------------------------------------------------------------------------
def run_train(cfg, out_dir, epochs=None, steps_per_epoch=None, verbose=None, time_budget_s=None):
    """Train ``cfg`` with ``model.fit``; write ``out_dir/model.keras``, checkpoints, logs.

    With ``time_budget_s`` training stops at the first epoch end past the budget and the
    learning-rate decays happen at the reference's fractions of the budget
    (:class:`solo_tf.training.BudgetSchedule`); only the latest checkpoint is kept and no
    validation pass runs between epochs.

    Returns:
        (model, history dict, info dict from the data source).
    """
    from solo_tf.data.grid_targets import add_grid_targets, grid_targets_supported
    from solo_tf.data.pipeline import build_datasets
    from solo_tf.model import SOLO
    from solo_tf.training import BudgetSchedule, make_budget_optimizer, make_optimizer, set_precision

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if epochs is not None:
        cfg.train.epochs = int(epochs)
    if steps_per_epoch is not None:
        cfg.train.steps_per_epoch = int(steps_per_epoch)
    cfg.validate()
    keras.utils.set_random_seed(cfg.train.seed)
    set_precision(cfg.train)

    train_ds, val_ds, info = build_datasets(cfg)
    if info.get("class_names") and cfg.labels.class_names is None:
        cfg.labels.class_names = list(info["class_names"])
    if cfg.data.source == "coco" and cfg.labels.category_ids is None:
        from solo_tf.data.coco import coco_dataset

        cmap = coco_dataset(cfg.data, "train").category_map  # contiguous index -> {id, name}
        cfg.labels.category_ids = [int(cmap[i]["id"]) for i in range(len(cmap))]
    targets_in = cfg.train.targets_in
    if targets_in == "pipeline" and not grid_targets_supported():
        print(f"[solo-tf] targets_in=pipeline needs TensorFlow; computing targets in the model on "
              f"{keras.backend.backend()}", file=sys.stderr)
        targets_in = "model"
    if targets_in == "pipeline":
        train_ds = add_grid_targets(train_ds, cfg.model)
        if val_ds is not None:
            val_ds = add_grid_targets(val_ds, cfg.model)

    steps = cfg.train.steps_per_epoch or max(1, info["num_train"] // cfg.train.batch_size)
    if cfg.train.steps_per_epoch:
        train_ds = train_ds.repeat()
    cfg.to_yaml(out_dir / "config.yaml")

    model = SOLO(cfg.model, cfg.loss, cfg.labels, cfg.postprocess)
    budget = time_budget_s is not None
    model.compile(optimizer=make_budget_optimizer(cfg.train) if budget else make_optimizer(cfg.train, steps))
    (out_dir / "checkpoints").mkdir(exist_ok=True)
    ckpt = "latest.weights.h5" if budget else "epoch_{epoch:03d}.weights.h5"
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(out_dir / "checkpoints" / ckpt), save_weights_only=True),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
    ]
    if budget:
        t = cfg.train
        callbacks += [
            BudgetSchedule(t.lr, time_budget_s, t.warmup_iters, t.warmup_ratio, t.decay_factor),
            TimeBudget(time_budget_s, report=verbose is None or verbose > 0),
        ]
    history = model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps if cfg.train.steps_per_epoch else None,
        validation_data=None if budget else val_ds,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        # a budgeted run reports through TimeBudget: Keras would count epochs to 100000
        verbose=0 if budget else (_verbose() if verbose is None else verbose),
    )
    _atomic_save_model(model, out_dir / "model.keras")
    return model, history.history, info


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the epoch in which ``seconds`` have passed; with
    ``report`` print one progress line per epoch (time used, steps, losses) to stderr."""

    def __init__(self, seconds, report=False):
        super().__init__()
        self.seconds = float(seconds)
        self.report = report
        self.start = None
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.monotonic() - self.start
        if self.report:
            logs = logs or {}
            losses = "  ".join(f"{k} {logs[k]:.3f}" for k in ("loss", "focal_loss", "dice_loss") if k in logs)
            _log(f"  [{_mmss(elapsed)} / {_mmss(self.seconds)}] step {self.steps:>5}  {losses}")
        if elapsed >= self.seconds:
            self.model.stop_training = True


def _mmss(seconds):
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


# --------------------------------------------------------------------------------------------
def _load_model(path):
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    import solo_tf.inference  # noqa: F401  (registers the decoder layer for loading)
    import solo_tf.model  # noqa: F401

    return keras.saving.load_model(path)


def _config_for_model(model_path, config_arg):
    """The run's config: --config if given, else config.yaml beside the model."""
    from solo_tf.config import Config, load_config

    if config_arg:
        return load_config(config_arg)
    beside = Path(model_path).with_name("config.yaml")
    if beside.is_file():
        return load_config(beside)
    return Config()


def run_evaluate(model, cfg, out_json=None, results_json=None, max_batches=None, verbose=True):
    """COCO mask AP of ``model`` on the validation split of ``cfg.data``."""
    from solo_tf.data.pipeline import load_source, prepare
    from solo_tf.evaluation import evaluate_dataset, format_metrics

    cfg.model = model.model_config
    cfg.labels = model.labels_config
    src = load_source(cfg, "val")
    if src is None or src.num_records == 0:
        raise ValueError(f"data.source={cfg.data.source!r} has no validation split to evaluate on")
    ds = prepare(src.records, cfg.model, cfg.data, cfg.train.batch_size, training=False, with_meta=True,
                 drop_remainder=False)
    category_ids = cfg.labels.category_ids
    if cfg.data.source == "coco":  # score against the annotation file itself (crowd regions included)
        from solo_tf.evaluation import load_coco_gt

        coco_gt = load_coco_gt(cfg.data.coco.val_annotations)
    else:  # the source's own full-resolution masks, not the stride-4 training targets
        from solo_tf.evaluation import build_coco_gt

        coco_gt = build_coco_gt(
            ({"image_id": r["image_id"], "masks": r["masks"], "classes": r["classes"],
              "height": r["image"].shape[0], "width": r["image"].shape[1]}
             for r in src.records.as_numpy_iterator()),
            category_ids=category_ids, class_names=cfg.labels.class_names,
        )
    metrics = evaluate_dataset(
        model, ds, cfg.model, cfg.postprocess, category_ids=category_ids, coco_gt=coco_gt,
        max_batches=max_batches, results_path=results_json, metrics_path=out_json,
    )
    if verbose:
        print(metrics.get("table") or format_metrics(metrics), file=sys.stderr)
    return metrics


def _read_image(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def run_predict(model, image_paths, out_dir, postprocess=None, score_thr=None):
    """Overlay PNGs and a COCO-results JSON (RLE masks) for each image."""
    from solo_tf.evaluation import to_coco_results, write_json_atomic
    from solo_tf.inference import Predictor
    from solo_tf.visualize import draw_instances

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model, postprocess)
    images = [_read_image(p) for p in image_paths]  # fail on a bad file before any work
    results, written = [], []
    for image_id, (path, image, inst) in enumerate(zip(image_paths, images, predictor.predict(images))):
        keep = inst["scores"] >= (score_thr or 0.0)
        inst = {k: np.asarray(v)[keep] for k, v in inst.items()}  # every entry has one row per instance
        png = out_dir / f"{Path(path).stem}_pred.png"
        draw_instances(image, inst["masks"], inst["classes"], inst["scores"], predictor.class_names, png)
        written.append(str(png))
        for r in to_coco_results(image_id, inst["masks"], inst["classes"], inst["scores"],
                                 category_ids=predictor.model.labels_config.category_ids):
            r["file_name"] = str(path)
            results.append(r)
    write_json_atomic(out_dir / "predictions.json", results)
    return results, written


def run_demo(out_dir="solo_demo", minutes=10.0, num_train=None, num_val=None, verbose=None):
    """The main job: train shapes_demo within a time budget, evaluate, draw, summarise."""
    from solo_tf.config import load_config
    from solo_tf.data.pipeline import load_source, prepare
    from solo_tf.targets import gather_mask_targets, positive_slots, resize_masks
    from solo_tf.visualize import draw_instances, draw_target_grids, plot_training_curves

    t0 = time.monotonic()
    out_dir = Path(out_dir)
    cfg = load_config("shapes_demo")
    if num_train:
        cfg.data.shapes.num_train = int(num_train)
    if num_val:
        cfg.data.shapes.num_val = int(num_val)
    # the budget covers everything: keep ~15% (at least 20 s) for evaluation and pictures
    total_s = float(minutes) * 60.0
    train_s = max(total_s - max(0.15 * total_s, 20.0), 5.0)
    cfg.train.steps_per_epoch = min(50, max(1, cfg.data.shapes.num_train // cfg.train.batch_size))
    cfg.train.epochs = 100000  # the time budget ends training
    _log(f"solo-tf demo: training {cfg.name} ({cfg.model.variant}, {cfg.model.backbone}) on generated "
         f"shapes for ~{train_s / 60:.1f} min -> {out_dir}")
    model, history, info = run_train(cfg, out_dir, verbose=verbose, time_budget_s=train_s)
    train_seconds = time.monotonic() - t0

    _log("solo-tf demo: evaluating mask AP on held-out generated images")
    metrics = run_evaluate(model, cfg, out_json=out_dir / "metrics.json", results_json=out_dir / "val_results.json")

    _log("solo-tf demo: drawing pictures")
    pictures = []
    val = load_source(cfg, "val")
    images, y, meta = next(iter(prepare(val.records, cfg.model, cfg.data, 4, training=False, with_meta=True)))
    images, meta = images.numpy(), {k: v.numpy() for k, v in meta.items()}
    preds = run_predict_arrays(model, images, meta, cfg)
    zoom = max(1, 384 // max(cfg.model.image_size))  # small demo images are drawn enlarged
    for i, inst in enumerate(preds):
        path = out_dir / f"prediction_{i}.png"
        h, w = meta["valid_size"][i]
        image = np.repeat(np.repeat(images[i][:h, :w], zoom, axis=0), zoom, axis=1)
        masks = np.repeat(np.repeat(inst["masks"], zoom, axis=1), zoom, axis=2)
        draw_instances(image, masks, inst["classes"], inst["scores"], cfg.labels.class_names, path, score_thr=0.3)
        pictures.append(str(path))
    grids = model.grid_targets({k: v[:1] for k, v in y.items()})
    levels = []
    for lvl, ((category, owner), stride) in enumerate(zip(grids, cfg.model.mask_strides)):
        size = (cfg.model.image_size[0] // stride, cfg.model.image_size[1] // stride)
        s = cfg.model.num_grids[lvl]
        cells, owners, pos = positive_slots(owner, s * s)
        targets = keras.ops.convert_to_numpy(gather_mask_targets(resize_masks(y["masks"][:1], size), owners))[0]
        n = int(keras.ops.convert_to_numpy(pos).sum())
        levels.append({"category": keras.ops.convert_to_numpy(category)[0],
                       "owner": keras.ops.convert_to_numpy(owner)[0], "mask_targets": targets[:n]})
    pictures.append(str(draw_target_grids(images[0], levels, out_dir / "target_grids.png",
                                          class_names=cfg.labels.class_names)))
    pictures.append(str(plot_training_curves(out_dir / "history.csv", out_dir / "training_curves.png")))
    summary = {
        "mask_ap": metrics["AP"],
        "mask_ap50": metrics["AP50"],
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "model": str(out_dir / "model.keras"),
        "pictures": pictures,
    }
    return summary


def run_predict_arrays(model, images, meta, cfg):
    """Decoded instances for already-letterboxed canvases (B, H, W, 3) with their meta."""
    from solo_tf.decoder import postprocess_image
    from solo_tf.inference import build_inference_model

    infer = build_inference_model(model, cfg.postprocess)
    dets = {k: keras.ops.convert_to_numpy(v) for k, v in infer.predict_on_batch(images).items()}
    out = []
    for i in range(len(images)):
        h, w = (int(v) for v in meta["valid_size"][i])
        out.append(postprocess_image({k: v[i] for k, v in dets.items()}, (h, w), (h, w)))
    return out


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
def _cmd_train(args):
    from solo_tf.config import load_config

    cfg = load_config(args.config)
    cfg.data.skip_bad = cfg.data.skip_bad or args.skip_bad
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    out = Path(args.out or f"runs/{cfg.name}")
    _, history, _ = run_train(cfg, out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    print(json.dumps({"model": str(out / "model.keras"), "final_loss": history["loss"][-1]}))


def _cmd_demo(args):
    summary = run_demo(args.out, args.minutes)
    print(json.dumps(summary))


def _cmd_evaluate(args):
    model = _load_model(args.model)
    cfg = _config_for_model(args.model, args.config)
    cfg.data.skip_bad = cfg.data.skip_bad or args.skip_bad
    if args.data:
        _set_eval_data(cfg, args.data, args.images)
    out = Path(args.out) if args.out else Path(args.model).with_name("eval")
    metrics = run_evaluate(model, cfg, out_json=out / "metrics.json", results_json=out / "results.json",
                           max_batches=args.max_batches)
    print(json.dumps({k: metrics[k] for k in metrics if k != "table"}))


def _set_eval_data(cfg, data, images=None):
    """Point ``cfg.data`` at ``data``: a COCO JSON (+ image folder) or a YAML config's data."""
    from solo_tf.config import load_config

    path = Path(data)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        if images is None:
            images = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
        cfg.data.source = "coco"
        cfg.data.coco.val_annotations, cfg.data.coco.val_images = str(path), str(images)
    else:
        cfg.data = load_config(data).data


def _cmd_predict(args):
    model = _load_model(args.model)
    cfg = _config_for_model(args.model, args.config)
    results, pictures = run_predict(model, args.images, args.out, cfg.postprocess, args.score_thr)
    print(json.dumps({"detections": len(results), "pictures": pictures,
                      "results": str(Path(args.out) / "predictions.json")}))


def _cmd_convert(args):
    from solo_tf.data.convert import convert_cis680_to_coco

    result = convert_cis680_to_coco(
        args.images, args.masks, args.labels, args.bboxes, args.out, trust_pickle=args.trust_pickle,
        skip_bad=args.skip_bad, val_fraction=args.val_fraction, seed=args.seed,
    )
    print(json.dumps(result if isinstance(result, dict) else {"out": str(args.out)}, default=str))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="solo-tf", description="SOLO / SOLOv2 instance segmentation for Keras 3")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a config (preset name or YAML file)")
    t.add_argument("--config", required=True, help="preset name (e.g. shapes_demo) or path to a YAML file")
    t.add_argument("--epochs", type=int, help="override train.epochs")
    t.add_argument("--steps-per-epoch", type=int, help="override train.steps_per_epoch")
    t.add_argument("--batch-size", type=int, help="override train.batch_size")
    t.add_argument("--out", help="output directory (default runs/<config name>)")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("demo", help="train a small SOLOv2 on generated shapes, evaluate, draw pictures")
    d.add_argument("--out", default="solo_demo", help="output directory (default solo_demo)")
    d.add_argument("--minutes", type=float, default=10.0,
                   help="wall-clock budget for the whole demo (training gets 85%%)")
    d.set_defaults(func=_cmd_demo)

    e = sub.add_parser("evaluate", help="COCO mask AP of a trained model on a validation split")
    e.add_argument("--model", required=True, help="a model.keras written by train or demo")
    e.add_argument("--config", help="config for the data (default: config.yaml beside the model)")
    e.add_argument("--data", help="what to evaluate on: a COCO instances JSON, or a YAML config whose "
                                  "data section (validation split) is used")
    e.add_argument("--images", help="image folder of a --data JSON (default: images/ beside it, else its folder)")
    e.add_argument("--max-batches", type=int, help="stop after this many batches")
    e.add_argument("--out", help="folder for metrics.json and results.json (default: eval/ beside the model)")
    e.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser("predict", help="instance masks for images: overlay PNGs + COCO results JSON")
    r.add_argument("--model", required=True)
    r.add_argument("images", nargs="+", help="image files (any size)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--config", help="config for post-processing (default: config.yaml beside the model)")
    r.add_argument("--score-thr", type=float, default=0.3, help="drop detections below this score in the output")
    r.set_defaults(func=_cmd_predict)

    c = sub.add_parser("convert", help="convert the CIS680 h5/npy dataset to COCO JSON + PNG images")
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

    for sp in (t, e):
        sp.add_argument("--skip-bad", action="store_true",
                        help="skip and count bad data records instead of stopping at the first")
    return p


def main(argv=None) -> int:
    from solo_tf.config import ConfigError

    import tensorflow as tf

    from solo_tf.data.errors import bad_record_logs, data_error_from

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"solo-tf: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"solo-tf: {e}", file=sys.stderr)
        return 1
    except tf.errors.OpError as e:  # a bad record met inside tf.data: its message names the file
        print(f"solo-tf: {data_error_from(e) or e.message}", file=sys.stderr)
        return 1
    finally:
        for log in bad_record_logs():
            print(f"solo-tf: {log.summary()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
