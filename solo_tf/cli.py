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

    Returns:
        (model, history dict, info dict from the data source).
    """
    from solo_tf.data.grid_targets import add_grid_targets, grid_targets_supported
    from solo_tf.data.pipeline import build_datasets
    from solo_tf.model import SOLO
    from solo_tf.training import make_optimizer, set_precision

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
    if info.get("class_names") and cfg.model.class_names is None:
        cfg.model.class_names = list(info["class_names"])
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

    model = SOLO(cfg.model)
    model.compile(optimizer=make_optimizer(cfg.train, steps))
    (out_dir / "checkpoints").mkdir(exist_ok=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(out_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5"),
                                        save_weights_only=True),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
    ]
    if time_budget_s is not None:
        callbacks.append(TimeBudget(time_budget_s))
    history = model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps if cfg.train.steps_per_epoch else None,
        validation_data=val_ds,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        verbose=_verbose() if verbose is None else verbose,
    )
    _atomic_save_model(model, out_dir / "model.keras")
    return model, history.history, info


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the epoch in which ``seconds`` have passed."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = float(seconds)
        self.start = None

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self.start >= self.seconds:
            self.model.stop_training = True


# --------------------------------------------------------------------------------------------
def _cmd_train(args):
    from solo_tf.config import load_config

    cfg = load_config(args.config)
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    out = Path(args.out or f"runs/{cfg.name}")
    _, history, _ = run_train(cfg, out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    print(json.dumps({"model": str(out / "model.keras"), "final_loss": history["loss"][-1]}))


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
    return p


def main(argv=None) -> int:
    from solo_tf.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"solo-tf: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
