"""The tasks: ``train``, ``evaluate``, ``predict``, ``demo``, ``convert`` and ``info`` as
library functions (in the spirit of TF Model Garden's ``tasks/``). ``solo-tf`` (cli.py) only
parses arguments, calls these and prints what they return.

None of them changes the caller's config: each works on a deep copy and returns what it
used (``TrainResult.config``). Every file goes through :mod:`solo_tf.io` (whole or not at
all); ``model.keras`` holds no optimizer state and loads in a new process
(:func:`solo_tf.io.load_model`); the per-epoch checkpoints hold it, for resuming.

Run folder written by :func:`train` (and :func:`demo`)::

    out_dir/config.yaml                  the config the run used (labels filled in)
    out_dir/model.keras                  the trained model, for use (no optimizer state)
    out_dir/checkpoints/epoch_NNN.weights.h5   weights + optimizer state after epoch NNN
                                         (a budgeted run keeps only latest.weights.h5)
    out_dir/history.csv                  per-epoch losses and learning rate (``lr``)
    out_dir/logs/                        TensorBoard
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np

from solo_tf.config import Config, load_config

DEMO_CONFIG = "shapes_demo"
DEMO_STEPS = 2500  # the default of `solo-tf demo`: a fixed amount of work, the same result on any machine
DEMO_PICTURES = 4  # held-out images drawn (ground truth beside prediction)
DEMO_SCORE_THR = 0.3  # predictions drawn in the demo pictures
DEMO_MAX_STEPS_PER_EPOCH = 50  # short epochs: a log line, a checkpoint and a time check each


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    ``model``: the trained :class:`solo_tf.model.SOLO` (compiled); ``history``: per-epoch
    logs (``loss``, ``focal_loss``, ``dice_loss``, ``lr``, ...); ``config``: the config the
    run used (a copy of the caller's, with overrides and labels filled in); ``info``: what
    the data source reported (``class_names``, ``num_train``, ``num_val``, ``stats``);
    ``steps``: optimizer steps taken; ``stopped_by_budget``: a time budget ended the run;
    ``bad_records``: the logs of data records skipped (``data.skip_bad``), to report.
    """

    model: keras.Model
    history: dict
    config: Config
    out_dir: Path
    model_path: Path
    info: dict
    steps: int
    stopped_by_budget: bool = False
    bad_records: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PredictResult:
    """What :func:`predict` returns: COCO result dicts (``file_name`` added), one instance
    dict per image (as :class:`solo_tf.inference.Predictor` gives them, after the score
    filter), the overlay PNGs and the results JSON."""

    results: list
    instances: list
    pictures: list
    results_path: Path


# --- train -----------------------------------------------------------------------------------
def train(config: Config, out_dir, *, epochs=None, steps_per_epoch=None, total_steps=None, time_budget_s=None,
          validation=True, keep_checkpoints=None, resume_from=None, strategy="none", callbacks=None,
          verbose=None, log=None) -> TrainResult:
    """Train ``config`` with ``model.fit`` and write the run folder (see the module docstring).

    Args:
        config: a :class:`solo_tf.config.Config` (not modified).
        out_dir: the run folder (created).
        epochs, steps_per_epoch: override ``config.train``.
        total_steps: train exactly this many steps, with the config's schedule shaped to
            them (decays at the same fractions of the steps as ``train.decay_epochs`` of
            ``train.epochs``: 27/36 and 33/36 in the presets,
            :func:`solo_tf.training.make_steps_optimizer`); epochs are
            ``train.steps_per_epoch`` long (default: one pass over the data), the last one
            cut short.
        time_budget_s: stop at the first epoch end past this many seconds. Alone, the
            learning-rate decays happen at those fractions of the budget
            (:class:`solo_tf.training.BudgetSchedule`) and only the latest checkpoint is
            kept; with ``total_steps`` it is only a cap on the step-shaped schedule.
        validation: compute the validation losses after each epoch (never in a budgeted
            run: the budget is for training).
        keep_checkpoints: keep only the newest this many per-epoch checkpoints (each holds
            the optimizer state: 2-3x the weights); None keeps all.
        resume_from: a checkpoint (``checkpoints/epoch_NNN.weights.h5``) of a run of the
            same config: weights and optimizer state (moments, iteration count, so the
            schedule's position) are restored and training continues at the epoch after it;
            ``"latest"``: the newest checkpoint in ``out_dir/checkpoints`` if there is one
            (a run killed at any point continues from its last finished epoch and ends with
            the planned number of steps), else a fresh start. The data stream starts a new
            pass over the (seeded) shuffled data, as detectron2's resume does.
        strategy: ``none`` | ``mirrored`` | ``multiworker`` (``TF_CONFIG``): data-parallel
            training (:mod:`solo_tf.distribute`); ``train.batch_size`` is the global batch.
            In a multi-worker run the chief writes ``out_dir``, worker i its own
            ``out_dir/worker_<i>``.
        callbacks: more Keras callbacks for ``fit``, after the run's own.
        verbose: Keras progress verbosity (default: a bar on a terminal, a line per epoch
            otherwise).
        log: a function taking one line of text (progress of budgeted runs); default stderr.

    Returns:
        :class:`TrainResult`.
    """
    from solo_tf.data.grid_targets import add_grid_targets, grid_targets_supported
    from solo_tf.data.pipeline import build_datasets
    from solo_tf.io import latest_checkpoint, load_checkpoint, save_model
    from solo_tf.model import SOLO
    from solo_tf.training import (
        BudgetSchedule,
        EpochCheckpoint,
        LearningRateLogger,
        ProgressReport,
        StepLimit,
        TimeBudget,
        decay_fractions,
        make_budget_optimizer,
        make_optimizer,
        make_steps_optimizer,
        set_precision,
    )

    from solo_tf.distribute import is_chief, make_strategy, replicas_of, tf_config_task, training_scope

    log = log or _log
    cfg = copy.deepcopy(config)
    out_dir = Path(out_dir)
    dist = make_strategy(strategy)
    replicas = replicas_of(dist)
    if cfg.train.batch_size % replicas:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} (the global batch) must be a multiple of the "
                         f"{replicas} replicas of --strategy {strategy}")
    if strategy == "multiworker" and not is_chief():
        out_dir = out_dir / f"worker_{tf_config_task()[1]}"  # every worker saves (collectives); one keeps the run
    # a run shaped to total_steps or a time budget decays at the config's own fractions of
    # its schedule (decay_epochs / epochs), whatever epoch count it then runs
    fractions = decay_fractions(cfg.train)
    if epochs is not None:
        cfg.train.epochs = int(epochs)
    if steps_per_epoch is not None:
        cfg.train.steps_per_epoch = int(steps_per_epoch)
    cfg.validate()
    if cfg.model.init_weights is not None and resume_from is None:
        from solo_tf.zoo import resolve_checkpoint

        # a zoo name: downloaded (once) now, before anything is built
        if not resolve_checkpoint(cfg.model.init_weights).is_file():
            raise FileNotFoundError(f"model.init_weights: checkpoint file not found: {cfg.model.init_weights}")
    keras.utils.set_random_seed(cfg.train.seed)
    set_precision(cfg.train)

    train_ds, val_ds, info = build_datasets(cfg)
    _fill_labels(cfg, info)
    targets_in = cfg.train.targets_in
    if targets_in == "pipeline" and not grid_targets_supported():
        log(f"[solo-tf] targets_in=pipeline needs TensorFlow; computing targets in the model on "
            f"{keras.backend.backend()}")
        targets_in = "model"
    if targets_in == "pipeline":
        train_ds = add_grid_targets(train_ds, cfg.model)
        if val_ds is not None:
            val_ds = add_grid_targets(val_ds, cfg.model)

    one_pass = max(1, info["num_train"] // cfg.train.batch_size)
    steps = cfg.train.steps_per_epoch or one_pass
    if total_steps is not None:
        total_steps = int(total_steps)
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        steps = min(steps, total_steps)
        cfg.train.steps_per_epoch = steps
        cfg.train.epochs = math.ceil(total_steps / steps)
    if cfg.train.steps_per_epoch:
        train_ds = train_ds.repeat()
    if strategy == "multiworker":
        train_ds, val_ds = (_shard_by_data(d) for d in (train_ds, val_ds))
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out_dir / "config.yaml")

    budget_schedule = time_budget_s is not None and total_steps is None
    with training_scope(dist):
        model = SOLO(cfg.model, cfg.loss, cfg.labels, cfg.postprocess)
        if total_steps is not None:
            optimizer = make_steps_optimizer(cfg.train, total_steps, fractions)
        elif budget_schedule:
            optimizer = make_budget_optimizer(cfg.train)
        else:
            optimizer = make_optimizer(cfg.train, steps)
        model.compile(optimizer=optimizer)
        model.optimizer.build(model.trainable_variables)  # its slots live where the strategy puts them
    if replicas > 1:
        log(f"[solo-tf] {strategy}: {replicas} replicas, {cfg.train.batch_size // replicas} images each per step")
    initial_epoch = 0
    if resume_from == "latest":
        resume_from = latest_checkpoint(out_dir / "checkpoints")
        if resume_from is None:
            log(f"[solo-tf] no checkpoint in {out_dir / 'checkpoints'} yet: starting the run")
    if resume_from is not None:
        done = load_checkpoint(model, resume_from)
        initial_epoch = done // steps
        log(f"[solo-tf] resumed from {resume_from}: {done} steps done, continuing at epoch {initial_epoch + 1}")
    elif cfg.model.init_weights is not None:
        apply_init_weights(model, cfg.model.init_weights, log=log)  # a fresh run only: a resumed one has its own

    ckpt_name = "latest.weights.h5" if budget_schedule else "epoch_{epoch:03d}.weights.h5"
    extra_callbacks = list(callbacks or [])
    callbacks = [
        LearningRateLogger(),  # before the CSVLogger: it adds the ``lr`` column
        EpochCheckpoint(out_dir / "checkpoints" / ckpt_name, keep=keep_checkpoints),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=resume_from is not None),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
    ]
    step_limit = timer = None
    if total_steps is not None and total_steps % steps:
        step_limit = StepLimit(total_steps - initial_epoch * steps)
        callbacks.append(step_limit)
    if budget_schedule:
        t = cfg.train
        callbacks.append(BudgetSchedule(t.lr, time_budget_s, t.warmup_iters, t.warmup_ratio, t.decay_factor,
                                        fractions))
    # runs set in steps or seconds report one line per epoch to stderr themselves (Keras
    # would count epochs, up to 100000 for a budget)
    own_report = (total_steps is not None or time_budget_s is not None) and (verbose is None or verbose > 0)
    if time_budget_s is not None:
        timer = TimeBudget(time_budget_s, report=own_report and total_steps is None)
        callbacks.append(timer)
    if own_report and total_steps is not None:
        callbacks.append(ProgressReport(total_steps))
    callbacks += extra_callbacks
    history = model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps if cfg.train.steps_per_epoch else None,
        validation_data=val_ds if validation and time_budget_s is None else None,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        verbose=0 if (own_report or verbose == 0) else (_fit_verbosity() if verbose is None else verbose),
    )
    model_path = save_model(model, out_dir / "model.keras")
    return TrainResult(
        model=model, history=history.history, config=cfg, out_dir=out_dir, model_path=model_path, info=info,
        steps=int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        stopped_by_budget=bool(timer is not None and timer.stopped_early),
        bad_records=[log for log in info.get("bad_records", []) if log.total],
    )


def apply_init_weights(model, path, log=None):
    """Load ``model.init_weights``, a reference (WXinlong/SOLO or mmdetection 2.x/3.x) COCO
    checkpoint file or zoo name (its cached checkpoint, :func:`solo_tf.zoo.resolve_checkpoint`), into a model
    :func:`train` has just built: :func:`solo_tf.reference_weights.load_reference_checkpoint`
    with ``strict=False``, so a model of another ``num_classes`` keeps its own category
    output conv (the log line says so); every other tensor must fit exactly.

    Returns:
        the :class:`solo_tf.reference_weights.ReferenceLoadReport`.
    """
    from solo_tf.reference_weights import load_reference_checkpoint
    from solo_tf.zoo import resolve_checkpoint

    report = load_reference_checkpoint(model, resolve_checkpoint(path), strict=False)
    (log or _log)(f"[solo-tf] model.init_weights: {report}")
    return report


def _shard_by_data(dataset):
    """Multi-worker input: every worker runs the same seeded pipeline and keeps its share of
    each batch (tf.data's DATA auto-shard; the sources are generators, not files)."""
    if dataset is None:
        return None
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _fill_labels(cfg, info):
    """Class names and the dataset's category ids (COCO, CIS680) from the data source, where
    the config has none: they are saved with the model."""
    if info.get("class_names") and cfg.labels.class_names is None:
        cfg.labels.class_names = list(info["class_names"])
    if info.get("category_ids") is not None and cfg.labels.category_ids is None:
        cfg.labels.category_ids = [int(c) for c in info["category_ids"]]


def _fit_verbosity():
    return 1 if sys.stdout.isatty() else 2


# --- models and their configs -----------------------------------------------------------------
def load_model(path):
    """A ``.keras`` file written by solo-tf (:func:`solo_tf.io.load_model`)."""
    from solo_tf.io import load_model as _load

    return _load(path)


def config_for_model(model_path, config=None) -> Config:
    """The config a saved model runs with: ``config`` (a Config, preset name or YAML path) if
    given, else ``config.yaml`` beside the model, else the defaults. A new object."""
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if config:
        return load_config(config)
    beside = Path(model_path).with_name("config.yaml") if model_path is not None else None
    if beside is not None and beside.is_file():
        return load_config(beside)
    return Config()


def with_eval_data(config: Config, data, images=None) -> Config:
    """A copy of ``config`` whose validation data is ``data``: a COCO instances JSON (image
    folder ``images``, default ``images/`` beside it, else its folder) or a YAML config /
    preset whose data section is used."""
    cfg = copy.deepcopy(config)
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
    return cfg


def _model_and_config(model, config):
    """(model, config copy): ``model`` a SOLO or a path; the config from :func:`config_for_model`."""
    path = None
    if not isinstance(model, keras.Model):
        path = Path(model)
        model = load_model(path)
    return model, config_for_model(path, config)


# --- evaluate -------------------------------------------------------------------------------
def evaluate(model, config=None, *, data=None, images=None, postprocess=None, metrics_path=None,
             results_path=None, max_batches=None) -> dict:
    """COCO mask AP of ``model`` on the validation split of the config's data.

    Args:
        model: a :class:`solo_tf.model.SOLO`, or a path to its ``.keras`` file.
        config: a Config, preset name or YAML path for the data (default: ``config.yaml``
            beside a model file, else the defaults). The model's own architecture, labels and
            post-processing are used whatever the config says.
        data, images: evaluate on this instead (see :func:`with_eval_data`).
        postprocess: decoder settings (default: the ones saved with the model).
        metrics_path, results_path: write the metrics / COCO results JSON there.
        max_batches: stop after this many batches.

    Returns:
        the metrics ``AP`` ... ``APl`` (0..1), ``num_images``, ``num_detections``, ``table``
        (printable) and ``bad_records`` (summaries of the records skipped, ``data.skip_bad``).
    """
    from solo_tf.data.pipeline import load_source, prepare
    from solo_tf.evaluation import build_coco_gt, evaluate_dataset, load_coco_gt

    model, cfg = _model_and_config(model, config)
    if data is not None:
        cfg = with_eval_data(cfg, data, images)
    cfg.model, cfg.labels = copy.deepcopy(model.model_config), copy.deepcopy(model.labels_config)
    src = load_source(cfg, "val")
    if src is None or src.num_records == 0:
        raise ValueError(f"data.source={cfg.data.source!r} has no validation split to evaluate on")
    ds = prepare(src.records, cfg.model, cfg.data, cfg.train.batch_size, training=False, with_meta=True,
                 drop_remainder=False)
    category_ids = cfg.labels.category_ids
    if cfg.data.source == "coco":  # score against the annotation file itself (crowd regions included)
        coco_gt = load_coco_gt(cfg.data.coco.val_annotations)
    else:  # the source's own full-resolution masks, not the stride-4 training targets
        coco_gt = build_coco_gt(
            ({"image_id": r["image_id"], "masks": r["masks"], "classes": r["classes"],
              "height": r["image"].shape[0], "width": r["image"].shape[1]}
             for r in src.records.as_numpy_iterator()),
            category_ids=category_ids, class_names=cfg.labels.class_names,
        )
    metrics = evaluate_dataset(
        model, ds, cfg.model, postprocess or model.postprocess_config, category_ids=category_ids,
        class_names=cfg.labels.class_names, coco_gt=coco_gt, max_batches=max_batches,
        results_path=results_path, metrics_path=metrics_path,
    )
    bad = src.bad_records
    metrics["bad_records"] = [bad.summary()] if bad is not None and bad.total else []
    return metrics


# --- predict --------------------------------------------------------------------------------
def read_image(path) -> np.ndarray:
    """An image file as (h, w, 3) uint8 RGB; a clear error naming a missing or bad file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def predict(model, image_paths, out_dir, *, postprocess=None, score_thr=None) -> PredictResult:
    """Instances for image files: an overlay PNG per image (``<stem>_pred.png``) and a
    COCO-results JSON (``predictions.json``, RLE masks at each image's size, the model's
    category ids, ``file_name`` added) in ``out_dir``.

    Args:
        model: a :class:`solo_tf.model.SOLO` or a path to its ``.keras`` file.
        image_paths: image files of any size; all are read (and a bad one reported) first.
        out_dir: output folder (created).
        postprocess: decoder settings (default: the ones saved with the model).
        score_thr: drop instances scored below this from the outputs.
    """
    from solo_tf.evaluation import to_coco_results
    from solo_tf.inference import Predictor
    from solo_tf.io import write_json
    from solo_tf.visualize import draw_instances

    if not isinstance(model, keras.Model):
        model = load_model(model)
    images = [read_image(p) for p in image_paths]  # fail on a bad file before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model, postprocess)
    thr = float(score_thr or 0.0)
    results, kept, pictures = [], [], []
    for image_id, (path, image, inst) in enumerate(zip(image_paths, images, predictor.predict(images))):
        keep = inst["scores"] >= thr
        inst = {k: np.asarray(v)[keep] for k, v in inst.items()}  # every entry has one row per instance
        kept.append(inst)
        png = out_dir / f"{Path(path).stem}_pred.png"
        draw_instances(image, inst["masks"], inst["classes"], inst["scores"], predictor.class_names, png,
                       score_thr=thr, title=f"{Path(path).name}: {len(inst['scores'])} instances")
        pictures.append(str(png))
        for r in to_coco_results(image_id, inst["masks"], inst["classes"], inst["scores"],
                                 category_ids=model.labels_config.category_ids):
            r["file_name"] = str(path)
            results.append(r)
    results_path = write_json(out_dir / "predictions.json", results)
    return PredictResult(results=results, instances=kept, pictures=pictures, results_path=results_path)


# --- demo -----------------------------------------------------------------------------------
def demo(out_dir="solo_demo", *, steps=None, minutes=None, num_train=None, num_val=None, verbose=None,
         log=None, callbacks=None) -> dict:
    """The first ten minutes: train ``shapes_demo`` on generated shapes, evaluate mask AP on
    held-out images, draw pictures, summarise.

    Args:
        out_dir: the run folder (see the module docstring) plus ``metrics.json``,
            ``val_results.json``, ``prediction_<i>.png`` (ground truth beside prediction),
            ``target_grids.png`` and ``training_curves.png``.
        steps: train exactly this many steps, the reference schedule shaped to them
            (reproducible: the result does not depend on the machine's speed). Default
            :data:`DEMO_STEPS` when ``minutes`` is not given either.
        minutes: wall-clock budget. Alone: the whole demo fits in it, training gets what
            evaluation and pictures leave (~85%) and the schedule follows the clock, so the
            result depends on the machine. With ``steps``: a cap; a run it cuts short says
            that its result is below what the full run gives.
        num_train, num_val: override the generated set sizes.
        verbose: Keras / progress verbosity (0 silences the per-epoch lines).
        log: a function taking one line of text; default stderr.
        callbacks: more Keras callbacks for the training (:func:`train`).

    Returns:
        JSON-ready summary: ``mask_ap``, ``mask_ap50``, ``steps``, ``train_seconds``,
        ``total_seconds``, ``model``, ``pictures`` (and ``note`` when a cap cut the run short).
    """
    log = log or _log
    if steps is None and minutes is None:
        steps = DEMO_STEPS
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    cfg = load_config(DEMO_CONFIG)
    if num_train:
        cfg.data.shapes.num_train = int(num_train)
    if num_val:
        cfg.data.shapes.num_val = int(num_val)
    cfg.train.steps_per_epoch = min(DEMO_MAX_STEPS_PER_EPOCH, max(1, cfg.data.shapes.num_train // cfg.train.batch_size))
    what = f"{cfg.name} ({cfg.model.variant}, {cfg.model.backbone}) on generated shapes"
    if steps is not None:
        budget = None if minutes is None else float(minutes) * 60.0
        cap = "" if budget is None else f", at most {float(minutes):g} min"
        log(f"solo-tf demo: training {what} for {int(steps)} steps{cap} -> {out_dir}")
        run = train(cfg, out_dir, total_steps=int(steps), time_budget_s=budget, validation=False, keep_checkpoints=1,
                    callbacks=callbacks, verbose=verbose, log=log)
    else:
        # the budget covers everything: keep ~15% (at least 20 s) for evaluation and pictures
        total_s = float(minutes) * 60.0
        train_s = max(total_s - max(0.15 * total_s, 20.0), 5.0)
        log(f"solo-tf demo: training {what} for ~{train_s / 60:.1f} min -> {out_dir}")
        # epochs: the time budget ends training (the schedule's decays stay the config's fractions)
        run = train(cfg, out_dir, epochs=100000, time_budget_s=train_s, callbacks=callbacks, verbose=verbose, log=log)
    train_seconds = time.monotonic() - t0
    cfg, model = run.config, run.model

    log("solo-tf demo: evaluating mask AP on held-out generated images")
    metrics = evaluate(model, cfg, metrics_path=out_dir / "metrics.json", results_path=out_dir / "val_results.json")
    log(metrics["table"])

    log("solo-tf demo: drawing pictures")
    pictures = demo_pictures(model, cfg, out_dir)
    summary = {
        "mask_ap": metrics["AP"],
        "mask_ap50": metrics["AP50"],
        "steps": run.steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "model": str(run.model_path),
        "pictures": pictures,
    }
    if steps is not None and run.steps < int(steps):
        summary["note"] = (f"the {float(minutes):g}-minute cap stopped training at step {run.steps} of {int(steps)}: "
                           "the result is below what the full run gives")
        log(f"solo-tf demo: {summary['note']}")
    return summary


def demo_pictures(model, cfg: Config, out_dir, num_images=DEMO_PICTURES, score_thr=DEMO_SCORE_THR) -> list:
    """The demo's pictures of a trained model: ``prediction_<i>.png`` (ground truth beside
    prediction, held-out images), ``target_grids.png`` (the training targets of the first
    one) and ``training_curves.png`` (from ``out_dir/history.csv``). Returns their paths."""
    from solo_tf.data.pipeline import load_source, prepare
    from solo_tf.inference import Predictor
    from solo_tf.visualize import draw_comparison, draw_target_grids, plot_training_curves

    out_dir = Path(out_dir)
    names = model.labels_config.names(model.model_config.num_classes)
    val = load_source(cfg, "val")
    records = list(val.records.take(num_images).as_numpy_iterator())
    predictions = Predictor(model).predict([r["image"] for r in records])
    pictures = []
    for i, (r, pred) in enumerate(zip(records, predictions)):
        path = out_dir / f"prediction_{i}.png"
        draw_comparison(r["image"], {"masks": r["masks"], "classes": r["classes"]}, pred, names, path,
                        score_thr=score_thr, title=f"held-out image {int(r['image_id'])}: ground truth | prediction")
        pictures.append(str(path))
    images, y = next(iter(prepare(val.records.take(1), cfg.model, cfg.data, 1, training=False)))
    pictures.append(draw_target_grids(images.numpy()[0], target_grid_levels(model, y), out_dir / "target_grids.png",
                                      class_names=names, title="training targets of held-out image 0"))
    pictures.append(plot_training_curves(out_dir / "history.csv", out_dir / "training_curves.png",
                                         title=f"{cfg.name}: training curves"))
    return pictures


def target_grid_levels(model, y) -> list:
    """The grid targets of the first image of ``y`` (the pipeline's padded ground truth) per
    level, as :func:`solo_tf.visualize.draw_target_grids` takes them."""
    from keras import ops

    from solo_tf.decoder import MASK_STRIDE
    from solo_tf.targets import gather_mask_targets, positive_slots, resize_masks

    mc = model.model_config
    y = {k: v[:1] for k, v in y.items()}
    canvas = (y["masks"].shape[2] * MASK_STRIDE, y["masks"].shape[3] * MASK_STRIDE)  # either canvas of the model
    levels = []
    for lvl, ((category, owner), stride) in enumerate(zip(model.grid_targets(y), model.variant.mask_strides)):
        size = (canvas[0] // stride, canvas[1] // stride)
        s = mc.num_grids[lvl]
        _, owners, pos, _ = positive_slots(owner, s * s)
        targets = ops.convert_to_numpy(gather_mask_targets(resize_masks(y["masks"], size), owners))[0]
        n = int(ops.convert_to_numpy(pos).sum())
        levels.append({"category": ops.convert_to_numpy(category)[0], "owner": ops.convert_to_numpy(owner)[0],
                       "mask_targets": targets[:n]})
    return levels


# --- convert --------------------------------------------------------------------------------
def convert(images, masks, labels, bboxes, out_dir, *, trust_pickle=False, skip_bad=False, val_fraction=0.2,
            seed=0, progress=True) -> dict:
    """The CIS680 h5/npy dataset as COCO JSON + PNG images
    (:func:`solo_tf.data.convert.convert_cis680_to_coco`)."""
    from solo_tf.data.convert import convert_cis680_to_coco

    return convert_cis680_to_coco(images, masks, labels, bboxes, out_dir, trust_pickle=trust_pickle,
                                  skip_bad=skip_bad, val_fraction=val_fraction, seed=seed, progress=progress)


# --- info -----------------------------------------------------------------------------------
def info(model_path) -> dict:
    """What a saved model is: variant, backbone, input size, classes with their dataset ids,
    post-processing, parameter count, file size."""
    path = Path(model_path)
    model = load_model(path)
    mc, labels = model.model_config, model.labels_config
    names = labels.names(mc.num_classes)
    ids = labels.category_ids or [c + 1 for c in range(mc.num_classes)]
    weights = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    return {
        "model": str(path),
        "variant": mc.variant,
        "backbone": mc.backbone,
        "input_size": list(mc.image_size),
        "canvases": [list(c) for c in mc.canvases],
        "num_grids": list(mc.num_grids),
        "classes": [{"index": c, "name": names[c], "dataset_id": int(ids[c])} for c in range(mc.num_classes)],
        "dataset_ids_given": labels.category_ids is not None,
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(np.prod(v.shape)) for v in model.trainable_weights)),
        "weights_bytes": int(weights),
        "file_bytes": path.stat().st_size,
        "postprocess": dataclasses.asdict(model.postprocess_config),
    }


def _log(msg):
    print(msg, file=sys.stderr, flush=True)
