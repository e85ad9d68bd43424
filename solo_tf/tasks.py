"""The tasks: ``train``, ``evaluate``, ``predict``, ``demo``, ``convert`` and ``info`` as
library functions (in the spirit of TF Model Garden's ``tasks/``). ``solo-tf`` (cli.py) only
parses arguments, calls these and prints what they return.

None of them changes the caller's config: each works on a deep copy and returns what it
used (``TrainResult.config``). Every file goes through :mod:`solo_tf.io` (whole or not at
all); ``model.keras`` holds no optimizer state and loads in a new process
(:func:`solo_tf.saving.load_model`); the per-epoch checkpoints hold it, for resuming.

Run folder written by :func:`train` (and :func:`demo`)::

    out_dir/config.yaml                  the config the run used (labels filled in)
    out_dir/model.keras                  the trained model, for use (no optimizer state)
    out_dir/checkpoints/epoch_NNN.weights.h5   weights + optimizer state after epoch NNN
                                         (a budgeted run keeps only latest.weights.h5)
    out_dir/history.csv                  per-epoch losses, learning rate (``lr``) and, with
                                         ``train.val_every``, validation AP (``val_mask_AP`` ...)
    out_dir/best.keras                   the epoch of the highest validation mask AP (``val_every``)
    out_dir/results.png                  losses, learning rate and validation AP against epochs
    out_dir/logs/                        TensorBoard
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

import keras
import numpy as np

from solo_tf.config import Config, load_config
from solo_tf.console import log_line
from solo_tf.settings import resolve

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
    """What :func:`predict` returns: COCO result dicts (``file_name`` added, ``frame_index``
    for video frames), one instance dict per image file (as
    :class:`solo_tf.inference.Predictor` gives them, after the score filter; a video's
    frames are not kept: their instances are in ``results`` and the annotated video), the
    overlay PNGs, the results JSON, the annotated videos, a ``summary`` (``images``,
    ``videos`` (read), ``frames`` (of videos), ``detections``, ``masks`` (PNGs written),
    ``skipped`` (count by reason), ``seconds``, ``frames_per_second``, ``interrupted``,
    ``live``: every source was a camera or stream) and the ``skipped`` entries
    ``(name, reason, detail)``."""

    results: list
    instances: list
    pictures: list
    results_path: Path
    videos: list = dataclasses.field(default_factory=list)
    summary: dict = dataclasses.field(default_factory=dict)
    skipped: list = dataclasses.field(default_factory=list)

    def report(self) -> str:
        """The run in one line, for people."""
        s = self.summary
        parts = [f"{s['images']} image{'s' * (s['images'] != 1)}"] if s["images"] or not s["frames"] else []
        if s["frames"]:
            parts.append(f"{s['frames']} frame{'s' * (s['frames'] != 1)} of video")
        line = (f"predicted {' and '.join(parts)}: {s['detections']} detections in {s['seconds']:.1f} s "
                f"({s['frames_per_second']} frames/s)")
        if s["masks"]:
            line += f", {s['masks']} mask PNGs"
        skipped = sum(s["skipped"].values())
        line += "; skipped " + (", ".join(f"{n} {why}" for why, n in s["skipped"].items()) if skipped else "nothing")
        return line + ("; interrupted, what was done is written" if s["interrupted"] else "")


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
    from solo_tf.distribute import make_strategy, replicas_of, training_scope
    from solo_tf.model import SOLO
    from solo_tf.saving import save_model
    from solo_tf.training import make_run_optimizer

    log = log or _log
    cfg = copy.deepcopy(config)
    dist = make_strategy(strategy)
    out_dir = _run_folder(out_dir, strategy, replicas_of(dist), cfg)
    # --- set-up: data, the run's length and schedule, the model ---
    if cfg.model.init_weights is not None and resume_from is None:
        from solo_tf.zoo import resolve_checkpoint

        # a zoo name: downloaded (once) now, before anything is built
        if not resolve_checkpoint(cfg.model.init_weights).is_file():
            raise FileNotFoundError(f"model.init_weights: checkpoint file not found: {cfg.model.init_weights}")
    train_ds, val_ds, info, plan = _training_data(cfg, strategy, log, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                                  total_steps=total_steps, time_budget_s=time_budget_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out_dir / "config.yaml")
    with training_scope(dist):
        model = SOLO(cfg.model, cfg.loss, cfg.labels, cfg.postprocess)
        model.compile(optimizer=make_run_optimizer(cfg.train, plan))
        model.optimizer.build(model.trainable_variables)  # its slots live where the strategy puts them
    if replicas_of(dist) > 1:
        log(f"[solo-tf] {strategy}: {replicas_of(dist)} replicas, "
            f"{cfg.train.batch_size // replicas_of(dist)} images each per step")
    resume_from, initial_epoch = _resume_or_init(model, cfg, out_dir, resume_from, plan, log)
    # --- fit ---
    callbacks, timer, own_report = _run_callbacks(cfg, out_dir, plan, initial_epoch, resume_from, time_budget_s,
                                                  keep_checkpoints, verbose, callbacks, log, strategy)
    history = model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=plan.steps_per_epoch if plan.repeat else None,
        validation_data=val_ds if validation and time_budget_s is None else None,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        verbose=0 if (own_report or verbose == 0) else (_fit_verbosity() if verbose is None else verbose),
    )
    # --- outputs ---
    model_path = save_model(model, out_dir / "model.keras")
    if history.history:
        from solo_tf.visualize import plot_training_curves

        plot_training_curves(out_dir / "history.csv", out_dir / "results.png", title=f"{cfg.name}: losses and AP")
    return TrainResult(
        model=model, history=history.history, config=cfg, out_dir=out_dir, model_path=model_path, info=info,
        steps=int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        stopped_by_budget=bool(timer is not None and timer.stopped_early),
        bad_records=[log for log in info.get("bad_records", []) if log.total],
    )


def _run_folder(out_dir, strategy, replicas, cfg) -> Path:
    """The folder this process writes: ``out_dir``, or ``out_dir/worker_<i>`` for a
    multi-worker run's worker i > 0 (every worker saves, for the collectives; one keeps the run)."""
    from solo_tf.distribute import is_chief, tf_config_task

    if cfg.train.batch_size % replicas:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} (the global batch) must be a multiple of the "
                         f"{replicas} replicas of --strategy {strategy}")
    out_dir = Path(out_dir)
    if strategy == "multiworker" and not is_chief():
        out_dir = out_dir / f"worker_{tf_config_task()[1]}"
    return out_dir


def _training_data(cfg, strategy, log, **shape):
    """Check ``cfg`` whole, seed, set the precision, build the datasets (labels filled in from
    the source, grid targets in the pipeline where asked) and plan the run
    (:func:`solo_tf.training.plan_run` with ``shape``). Returns (train_ds, val_ds, info, plan)."""
    from solo_tf.data.grid_targets import add_grid_targets, grid_targets_supported
    from solo_tf.data.pipeline import build_datasets
    from solo_tf.training import plan_run, set_precision
    from solo_tf.variants import check_model_config

    cfg.validate()
    check_model_config(cfg.model)
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
    plan = plan_run(cfg.train, info["num_train"], **shape)
    if plan.repeat:
        train_ds = train_ds.repeat()
    if strategy == "multiworker":
        train_ds, val_ds = (_shard_by_data(d) for d in (train_ds, val_ds))
    return train_ds, val_ds, info, plan


def _resume_or_init(model, cfg, out_dir, resume_from, plan, log):
    """Restore a checkpoint (``"latest"``: the newest in ``out_dir/checkpoints``, if any) or,
    in a fresh run, load ``model.init_weights``. Returns (checkpoint or None, initial epoch)."""
    from solo_tf.saving import latest_checkpoint, load_checkpoint

    if resume_from == "latest":
        resume_from = latest_checkpoint(out_dir / "checkpoints")
        if resume_from is None:
            log(f"[solo-tf] no checkpoint in {out_dir / 'checkpoints'} yet: starting the run")
    if resume_from is not None:
        done = load_checkpoint(model, resume_from)
        initial_epoch = done // plan.steps_per_epoch
        log(f"[solo-tf] resumed from {resume_from}: {done} steps done, continuing at epoch {initial_epoch + 1}")
        return resume_from, initial_epoch
    if cfg.model.init_weights is not None:
        apply_init_weights(model, cfg.model.init_weights, log=log)  # a fresh run only: a resumed one has its own
    return None, 0


def _run_callbacks(cfg, out_dir, plan, initial_epoch, resume_from, time_budget_s, keep_checkpoints, verbose, extra,
                   log, strategy):
    """The run's own callbacks (learning-rate column, validation AP, checkpoints,
    history.csv, TensorBoard, NaN stop, step and time limits, progress lines), then
    ``extra``. Returns (callbacks, the TimeBudget or None, whether the run reports its own
    progress lines)."""
    from solo_tf.distribute import is_chief
    from solo_tf.saving import EpochCheckpoint
    from solo_tf.training import BudgetSchedule, LearningRateLogger, ProgressReport, StepLimit, TimeBudget

    ckpt_name = "latest.weights.h5" if plan.budget_schedule else "epoch_{epoch:03d}.weights.h5"
    callbacks = [LearningRateLogger()]  # these two before the CSVLogger and TensorBoard: they add columns
    if cfg.train.val_every and (strategy != "multiworker" or is_chief()):
        from solo_tf.validation import ValidationAP

        _, val_ds, coco_gt = evaluation_data(cfg, cfg.train.val_max_images)
        callbacks.append(ValidationAP(val_ds, coco_gt, cfg.postprocess, every=cfg.train.val_every,
                                      best_path=out_dir / "best.keras", category_ids=cfg.labels.category_ids,
                                      class_names=cfg.labels.names(cfg.model.num_classes), log=log))
    callbacks += [
        EpochCheckpoint(out_dir / "checkpoints" / ckpt_name, keep=keep_checkpoints),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=resume_from is not None),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
    ]
    total_steps, steps = plan.total_steps, plan.steps_per_epoch
    if total_steps is not None and total_steps % steps:
        callbacks.append(StepLimit(total_steps - initial_epoch * steps))
    if plan.budget_schedule:
        t = cfg.train
        callbacks.append(BudgetSchedule(t.lr, time_budget_s, t.warmup_iters, t.warmup_ratio, t.decay_factor,
                                        plan.fractions))
    # runs set in steps or seconds report one line per epoch to stderr themselves (Keras
    # would count epochs, up to 100000 for a budget)
    own_report = (total_steps is not None or time_budget_s is not None) and (verbose is None or verbose > 0)
    timer = None
    if time_budget_s is not None:
        timer = TimeBudget(time_budget_s, report=own_report and total_steps is None)
        callbacks.append(timer)
    if own_report and total_steps is not None:
        callbacks.append(ProgressReport(total_steps))
    return callbacks + list(extra or []), timer, own_report


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


# --- evaluation data ---------------------------------------------------------------------------
def with_eval_data(config: Config, data, images=None) -> Config:
    """A copy of ``config`` whose validation data is ``data``: a file or folder some data
    source reads (a COCO instances JSON, with ``images`` its image folder, default
    ``images/`` beside it, else its folder; see each source's ``eval_data`` hook in
    :mod:`solo_tf.data.catalog`), or else a YAML config / preset whose data section is used."""
    from solo_tf.data.catalog import get_source, source_names

    cfg = copy.deepcopy(config)
    path = Path(data)
    for name in source_names():
        spec = get_source(name)
        section = copy.deepcopy(cfg.data.sections.get(name) or spec.section())
        if spec.eval_data is not None and spec.eval_data(section, path, images):
            cfg.data.source = name
            setattr(cfg.data, name, section)
            return cfg
    if images is not None:
        raise ValueError(f"--images applies to a data file or folder; {data} is read as a config")
    cfg.data = load_config(data).data
    return cfg


def evaluation_data(cfg: Config, max_images=None):
    """The validation split of ``cfg``'s data, ready to score: (the RecordSource, batches
    ``(images, y, meta)`` of it, the pycocotools ground truth). A split with an annotation
    file (COCO) is scored against that file itself (crowd regions included); other sources
    against their own full-resolution masks, not the stride-4 training targets.
    ``max_images``: the first this many images only."""
    from solo_tf.data.pipeline import load_source, prepare
    from solo_tf.evaluation import build_coco_gt, load_coco_gt

    src = load_source(cfg, "val")
    if src is None or src.num_records == 0:
        raise ValueError(f"data.source={cfg.data.source!r} has no validation split to evaluate on")
    records = src.records if max_images is None else src.records.take(int(max_images))
    ds = prepare(records, cfg.model, cfg.data, cfg.train.batch_size, training=False, with_meta=True,
                 drop_remainder=False)
    if src.annotation_file is not None:  # the annotation file itself (crowd regions included)
        coco_gt = load_coco_gt(src.annotation_file)
    else:  # the source's own full-resolution masks, not the stride-4 training targets
        coco_gt = build_coco_gt(
            ({"image_id": r["image_id"], "masks": r["masks"], "classes": r["classes"],
              "height": r["image"].shape[0], "width": r["image"].shape[1]}
             for r in records.as_numpy_iterator()),
            category_ids=cfg.labels.category_ids, class_names=cfg.labels.class_names,
        )
    return src, ds, coco_gt


# --- evaluate -------------------------------------------------------------------------------
def evaluate(model, config=None, *, data=None, images=None, postprocess=None, metrics_path=None,
             results_path=None, max_batches=None, plots_dir=None, pictures=0, image_size=None) -> dict:
    """COCO mask and box AP of ``model`` on the validation split of the config's data, per
    class too, with the pictures that explain them.

    Args:
        model: a :class:`solo_tf.model.SOLO`, or a path to its ``.keras`` file.
        config, postprocess: what the user named for this run; the data, architecture,
            labels and decoder settings follow :func:`solo_tf.settings.resolve`.
        data, images: evaluate on this instead (see :func:`with_eval_data`).
        metrics_path, results_path: write the metrics / COCO results JSON there.
        max_batches: stop after this many batches.
        plots_dir: write ``pr_curves.png`` and ``confusion_matrix.png`` there.
        pictures: also write the ``pictures`` worst and best images (by the F1 of their
            instances matched at IoU 0.5, :func:`solo_tf.evaluation.match_instances`),
            ground truth beside prediction, as ``plots_dir/worst_<i>.png`` / ``best_<i>.png``.
        image_size: (H, W) network canvas to evaluate at instead of the model's (a zoo
            model's is its published test scale; positive multiples of 32): the images are
            letterboxed onto it (and onto its transpose with ``portrait_canvas``) and the
            model's weights run on that canvas's graph.

    Returns:
        :func:`solo_tf.evaluation.score_results`'s report (mask ``AP`` ... ``APl``, box
        ``box_AP`` ..., ``per_class``, ``pr``, ``confusion``, ``per_image``) plus
        ``num_images``, ``num_detections``, ``table`` and ``class_table`` (printable),
        ``plots`` (paths written) and ``bad_records`` (summaries of the records skipped,
        ``data.skip_bad``).
    """
    from solo_tf.evaluation import evaluate_dataset

    run = resolve(model, config=config, postprocess=postprocess)
    model, cfg = run.model, run.config
    if data is not None:
        cfg = with_eval_data(cfg, data, images)
    if image_size is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_size=tuple(int(v) for v in image_size)))
        cfg.model.validate()
    src, ds, coco_gt = evaluation_data(cfg)
    category_ids = cfg.labels.category_ids
    names = cfg.labels.names(cfg.model.num_classes)
    metrics = evaluate_dataset(
        model, ds, cfg.model, run.postprocess, category_ids=category_ids,
        class_names=names, coco_gt=coco_gt, max_batches=max_batches,
        results_path=results_path, metrics_path=metrics_path,
    )
    metrics["plots"] = []
    if plots_dir is not None:
        from solo_tf.visualize import plot_confusion_matrix, plot_pr_curves

        plots_dir = Path(plots_dir)
        plots_dir.mkdir(parents=True, exist_ok=True)
        metrics["plots"] += [plot_pr_curves(metrics["pr"], plots_dir / "pr_curves.png"),
                             plot_confusion_matrix(metrics["confusion"], plots_dir / "confusion_matrix.png")]
        if pictures:
            metrics["plots"] += _worst_and_best(model, ds, coco_gt, metrics["per_image"], int(pictures), plots_dir,
                                                run.postprocess, names, category_ids, max_batches)
    bad = src.bad_records
    metrics["bad_records"] = [bad.summary()] if bad is not None and bad.total else []
    return metrics


def _worst_and_best(model, ds, coco_gt, per_image, n, out_dir, postprocess, names, category_ids, max_batches):
    """Ground truth beside prediction for the ``n`` worst and ``n`` best images by per-image F1
    (worst: lowest F1, more objects first; best: highest F1 among images with objects). A
    second pass over ``ds`` predicts only the batches that hold them."""
    from PIL import Image

    from solo_tf.inference import Predictor
    from solo_tf.visualize import draw_comparison

    scored = [(int(i), s) for i, s in per_image.items() if s["objects"] or s["fp"]]
    worst = sorted(scored, key=lambda x: (x[1]["f1"], -x[1]["objects"], x[0]))[:n]
    best = sorted([x for x in scored if x[1]["objects"]], key=lambda x: (-x[1]["f1"], -x[1]["objects"], x[0]))[:n]
    wanted = {}  # image id -> its (kind, rank, counts): an image can be among the worst and the best
    for kind, chosen in (("worst", worst), ("best", best)):
        for rank, (iid, s) in enumerate(chosen):
            wanted.setdefault(iid, []).append((kind, rank, s))
    predictor = Predictor(model, postprocess)
    index_of = ({int(cid): c for c, cid in enumerate(category_ids)} if category_ids is not None
                else {c + 1: c for c in range(len(names))})
    paths = {}
    for bi, (images, _, meta) in enumerate(ds.as_numpy_iterator()):
        if max_batches is not None and bi >= max_batches:
            break
        ids = [int(v) for v in meta["image_id"]]
        if not any(i in wanted for i in ids):
            continue
        found = predictor.predict_canvases(images, meta["valid_size"], meta["orig_size"])
        for k, iid in enumerate(ids):
            if iid not in wanted:
                continue
            (vh, vw), (oh, ow) = meta["valid_size"][k], meta["orig_size"][k]
            image = np.asarray(Image.fromarray(images[k, :vh, :vw].astype(np.uint8)).resize((int(ow), int(oh)),
                                                                                           Image.BILINEAR))
            anns = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[iid])) if not a.get("iscrowd", 0)]
            truth = {"masks": np.stack([coco_gt.annToMask(a) for a in anns]) if anns else np.zeros((0, oh, ow)),
                     "classes": np.asarray([index_of.get(int(a["category_id"]), -1) for a in anns], int)}
            for kind, rank, s in wanted[iid]:
                path = out_dir / f"{kind}_{rank}.png"
                draw_comparison(image, truth, found[k], names, path, score_thr=0.3,
                                title=f"{kind} {rank + 1}: image {iid}, F1 {s['f1']:.2f} "
                                      f"(tp {s['tp']}, fp {s['fp']}, fn {s['fn']})")
                paths[(kind, rank)] = str(path)
    return [paths[k] for k in sorted(paths)]


# --- predict --------------------------------------------------------------------------------
# predict's default batch: as many frames as fill this many canvas pixels, 1 to 16. On a CPU
# the network's cost per image hardly falls with the batch (compute-bound); what batching
# saves is the per-call overhead, which matters at small canvases (the demo's 128x128: 16
# frames, benchmarks/bench_predict_folder.py) and not at large ones (800x1344: 1 frame,
# whose activations already take ~1 GB).
PREDICT_BATCH_PIXELS = 16 * 128 * 128


def predict_batch_size(model, image_size=None) -> int:
    """:func:`predict`'s default frames per forward pass for ``model`` on its canvas or on
    ``image_size`` (see :data:`PREDICT_BATCH_PIXELS`)."""
    h, w = image_size or model.model_config.image_size
    return max(1, min(16, PREDICT_BATCH_PIXELS // (int(h) * int(w))))


def read_image(path) -> np.ndarray:
    """An image file as (h, w, 3) uint8 RGB; a clear error naming a missing or bad file
    (:func:`solo_tf.media.read_image`)."""
    from solo_tf.media import read_image as read

    return read(path)


def predict(model, sources, out_dir, *, config=None, postprocess=None, score_thr=None, batch_size=None,
            save_masks=False, overlays=True, progress=None, log=None, image_size=None) -> PredictResult:
    """Instances for what ``sources`` names (image files, folders, globs, videos, a camera
    index, a stream URL: :func:`solo_tf.media.expand_sources`), written to ``out_dir``:

    * ``<stem>_pred.png`` per image: the overlay (:func:`solo_tf.visualize.draw_instances`);
    * ``<stem>_pred.mp4`` per video, camera or stream: every frame annotated
      (:func:`solo_tf.visualize.annotate_frame`), at the source's frame rate;
    * ``predictions.json``: COCO results (RLE masks at each frame's size, the model's
      category ids) with ``file_name`` added, and ``frame_index`` for a video's frames;
      ``image_id`` numbers the frames in the order they were read;
    * with ``save_masks``: ``masks/<stem>[_f<frame>]_<k>_<label>.png``, one 0/255 PNG per
      instance at the frame's size (``k``: its rank by score in the frame; ``frame``: 6
      digits).

    Stems are the sources' file names without extension (``camera0`` for camera 0; the last
    path part of a URL), made unique with ``_2``, ``_3`` ... when two sources share one.
    Every file appears whole or not at all.

    What cannot be read (a non-image file in a folder, a corrupt image, a corrupt video
    frame, a truncated video) is named on ``log``, skipped and counted, and the run goes
    on; a source that does not exist is an error before any work, and so is a run where
    everything was skipped. Ctrl-C (KeyboardInterrupt) ends the run cleanly: what was done
    is written (the annotated video up to the last frame predicted) and the result says
    ``interrupted`` -- the way a camera or stream run is ended.

    Args:
        model: a :class:`solo_tf.model.SOLO` or a path to its ``.keras`` file.
        sources: one source or a list of them.
        out_dir: output folder (created).
        config, postprocess: what the user named for this run; the decoder settings follow
            :func:`solo_tf.settings.resolve`.
        score_thr: drop instances scored below this from the outputs.
        batch_size: frames per forward pass (default :func:`predict_batch_size`: 16 at 128x128,
            1 at 800x1344).
        save_masks: write the per-instance mask PNGs.
        overlays: write the overlay PNGs and annotated videos (False: the JSON and masks only).
        progress: a progress bar on stderr: True, False, or None (when stderr is a terminal).
        log: a function taking one line of text (default stderr).
        image_size: (H, W) network canvas instead of the model's (a zoo model's is its
            published test scale): :class:`solo_tf.inference.Predictor`'s ``image_size``.
    """
    from solo_tf.inference import Predictor
    from solo_tf.io import write_json
    from solo_tf.media import SkipLog, expand_sources

    log = log or _log
    skipped = SkipLog(log=lambda line: log(f"solo-tf: {line}"))
    sources = expand_sources(sources, skipped)  # a missing source: raised before any work
    run = resolve(model, config=config, postprocess=postprocess)
    predictor = Predictor(run.model, run.postprocess, image_size=image_size,
                          batch_size=batch_size or predict_batch_size(run.model, image_size))
    frames = predictor.stream(sources, skipped=skipped, progress=progress)
    out = _PredictOutputs(Path(out_dir), predictor.class_names, run.model.labels_config.category_ids,
                          float(score_thr or 0.0), overlays, save_masks)
    t0 = time.monotonic()
    interrupted = False
    try:
        for frame in frames:
            out.add(frame)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        out.abort()
        raise
    finally:
        frames.close()
    out.finish()
    seconds = time.monotonic() - t0
    if not out.count and not interrupted:
        raise ValueError(f"nothing to predict: {skipped.summary()}")
    results_path = write_json(out.dir / "predictions.json", out.results)
    summary = {
        "images": out.images, "videos": len(out.video_sources), "frames": out.frames, "detections": len(out.results),
        "masks": out.mask_pngs, "skipped": skipped.counts(), "seconds": round(seconds, 3),
        "frames_per_second": round(out.count / seconds, 2) if seconds > 0 else None, "interrupted": interrupted,
        "live": all(s.live for s in sources),
    }
    return PredictResult(results=out.results, instances=out.instances, pictures=out.pictures,
                         results_path=results_path, videos=out.videos, summary=summary,
                         skipped=list(skipped.entries))


class _PredictOutputs:
    """The files of one :func:`predict` run, written frame by frame as results arrive."""

    def __init__(self, out_dir: Path, class_names, category_ids, score_thr, overlays, save_masks):
        self.dir = out_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.class_names, self.category_ids = class_names, category_ids
        self.score_thr, self.overlays, self.save_masks = score_thr, overlays, save_masks
        self.results, self.instances, self.pictures, self.videos = [], [], [], []
        self.images = self.frames = self.mask_pngs = 0
        self.video_sources = set()  # ids of the videos, cameras and streams that gave a frame
        self._stems, self._used = {}, set()
        self._video = None  # (source, VideoWriter) of the video being written

    @property
    def count(self) -> int:
        return self.images + self.frames

    def _stem(self, source) -> str:
        if id(source) not in self._stems:
            stem, k = source.stem, 1
            while stem in self._used:
                k += 1
                stem = f"{source.stem}_{k}"
            self._used.add(stem)
            self._stems[id(source)] = (source, stem)  # the source kept: its id stays its own
        return self._stems[id(source)][1]

    def add(self, r) -> None:
        from solo_tf.evaluation import to_coco_results

        keep = r.instances["scores"] >= self.score_thr
        inst = {k: np.asarray(v)[keep] for k, v in r.instances.items()}  # every entry has one row per instance
        image_id, stem = self.count, self._stem(r.source)
        if r.frame_index is None:
            self.images += 1
            self.instances.append(inst)
            if self.overlays:
                self._overlay(r, inst, stem)
        else:
            self.frames += 1
            self.video_sources.add(id(r.source))  # kept alive by self._stems
            if self.overlays:
                self._video_frame(r, inst, stem)
        if self.save_masks:
            self._masks(inst, stem if r.frame_index is None else f"{stem}_f{r.frame_index:06d}")
        for res in to_coco_results(image_id, inst["masks"], inst["classes"], inst["scores"],
                                   category_ids=self.category_ids):
            res["file_name"] = r.name
            if r.frame_index is not None:
                res["frame_index"] = int(r.frame_index)
            self.results.append(res)

    def _overlay(self, r, inst, stem):
        from solo_tf.visualize import draw_instances

        png = self.dir / f"{stem}_pred.png"
        draw_instances(r.image, inst["masks"], inst["classes"], inst["scores"], self.class_names, png,
                       score_thr=self.score_thr, title=f"{Path(r.name).name}: {len(inst['scores'])} instances")
        self.pictures.append(str(png))

    def _video_frame(self, r, inst, stem):
        from solo_tf.media import VideoWriter
        from solo_tf.visualize import annotate_frame

        if self._video is None or self._video[0] is not r.source:
            self._close_video()
            self._video = (r.source, VideoWriter(self.dir / f"{stem}_pred.mp4", r.fps))
        self._video[1].write(annotate_frame(r.image, inst, self.class_names), r.frame_index)

    def _masks(self, inst, base):
        from PIL import Image

        from solo_tf.io import atomic_path
        from solo_tf.media import safe_name

        for k, (m, c) in enumerate(zip(inst["masks"], inst["classes"])):
            label = inst["labels"][k] if "labels" in inst else str(int(c))
            with atomic_path(self.dir / "masks" / f"{base}_{k}_{safe_name(label)}.png") as tmp:
                Image.fromarray(np.asarray(m, np.uint8) * 255).save(tmp, format="PNG")
            self.mask_pngs += 1

    def _close_video(self):
        if self._video is not None:
            path = self._video[1].close()
            if path is not None:
                self.videos.append(str(path))
            self._video = None

    def finish(self):
        self._close_video()

    def abort(self):
        if self._video is not None:
            self._video[1].abort()
            self._video = None


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
    pictures = _demo_pictures(model, cfg, out_dir)
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


def _demo_pictures(model, cfg: Config, out_dir, num_images=DEMO_PICTURES) -> list:
    """The demo's pictures (:func:`solo_tf.visualize.demo_pictures`) of held-out images of
    ``cfg``'s validation split."""
    from solo_tf.data.pipeline import load_source, prepare
    from solo_tf.visualize import demo_pictures

    val = load_source(cfg, "val")
    records = list(val.records.take(num_images).as_numpy_iterator())
    images, y = next(iter(prepare(val.records.take(1), cfg.model, cfg.data, 1, training=False)))
    return demo_pictures(model, records, (images.numpy()[0], y), Path(out_dir), title=cfg.name,
                         score_thr=DEMO_SCORE_THR)


# --- convert --------------------------------------------------------------------------------
def convert(data, out_dir, *, skip_bad=False, progress=True) -> dict:
    """A dataset as COCO JSON + image files (:func:`solo_tf.data.convert.convert_to_coco`):
    the train / val splits of ``data``'s source (a Config, a DataConfig, or a preset / YAML
    path whose data section is used), e.g. LabelMe, YOLO-seg or instance-PNG folders.
    ``skip_bad``: skip and count bad records (as ``data.skip_bad``)."""
    from solo_tf.config import DataConfig
    from solo_tf.data.convert import convert_to_coco

    if isinstance(data, Config):
        data = data.data
    elif not isinstance(data, DataConfig):
        data = load_config(data).data
    data = copy.deepcopy(data)
    data.skip_bad = bool(data.skip_bad or skip_bad)
    return convert_to_coco(data, out_dir, progress=progress)


def convert_cis680(images, masks, labels, bboxes, out_dir, *, trust_pickle=False, skip_bad=False, val_fraction=0.2,
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
    from solo_tf.saving import load_model

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


_log = log_line
