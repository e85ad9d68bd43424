"""Model files: the ``.keras`` file for use, the checkpoints that resume a run.

* :func:`save_model` / :func:`load_model`: architecture, config and weights, without
  optimizer state; loads in a new process on either backend.
* :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`latest_checkpoint` and the
  :class:`EpochCheckpoint` callback: weights and optimizer state, to resume training.

Every file is written through :func:`solo_tf.io.atomic_path` (whole or not at all). This
module imports the modules that register solo-tf's Keras classes (the model, its layers,
the decoder layer, the optimizers and schedules), so loading needs nothing else imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
from keras import ops

import solo_tf.model  # noqa: F401  (registers the model, its layers and the decoder layer)
import solo_tf.training  # noqa: F401  (registers the optimizers and schedules)
from solo_tf.io import atomic_path


def register_custom_objects() -> None:
    """Import every module that registers Keras classes a solo-tf file may reference (the
    model, its layers, the decoder, the optimizers and schedules), so that
    ``keras.saving.load_model`` finds them in a fresh process."""
    # imported at the top of this module: solo_tf.model (the model, its layers and, through
    # solo_tf.decoder, the decoder layer) and solo_tf.training (optimizers and schedules)


def load_model(path):
    """Load a ``.keras`` file written by solo-tf (any process, any backend)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    register_custom_objects()
    return keras.saving.load_model(path, compile=False)


def save_model(model, path) -> Path:
    """Save ``model`` for use: architecture, config and weights, without optimizer state or
    compile settings (so the file is about the size of its weights and loads without the
    training code's classes). Checkpoints for resuming training are written elsewhere,
    with their optimizer state."""
    if getattr(model, "optimizer", None) is not None:
        clone = model.__class__.from_config(model.get_config())
        clone.set_weights(model.get_weights())
        model = clone
    with atomic_path(path, suffix=".keras") as tmp:
        keras.saving.save_model(model, tmp)
    return Path(path)


def save_checkpoint(model, path) -> Path:
    """Weights and optimizer state (moments, iteration count) of a compiled ``model`` to a
    ``.weights.h5`` file, atomically: what resuming a run needs, unlike :func:`save_model`."""
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"checkpoint file names must end in .weights.h5, got {path}")
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    return path


def latest_checkpoint(folder):
    """The newest checkpoint a run left in ``folder`` (its ``checkpoints/``): the highest
    ``epoch_NNN.weights.h5``, else ``latest.weights.h5``; None when there is none. Only
    whole files are there (:func:`save_checkpoint` writes atomically), so the newest one is
    always readable, however the run was stopped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    numbered = [(int(m.group(1)), p) for p in folder.glob("epoch_*.weights.h5")
                if (m := re.fullmatch(r"epoch_(\d+)\.weights\.h5", p.name))]
    if numbered:
        return max(numbered)[1]
    latest = folder / "latest.weights.h5"
    return latest if latest.is_file() else None


def load_checkpoint(model, path) -> int:
    """Restore a :func:`save_checkpoint` file into ``model`` (compiled with the same kind of
    optimizer), optimizer state included. Returns the optimizer's iteration count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # the file's optimizer variables need a home
    model.load_weights(path)
    return int(ops.convert_to_numpy(model.optimizer.iterations)) if model.optimizer is not None else 0


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch write the model's weights AND the optimizer's state (moments,
    iteration count) to ``filepath`` (``{epoch:03d}`` is filled in, 1-based), atomically,
    so an interrupted run resumes from it (:func:`load_checkpoint`). The model
    file for use (:func:`save_model`) carries no optimizer state; these do (so
    they are 2-3x the weights' size). ``keep``: how many of the files this callback wrote
    to keep, newest first (None: all)."""

    def __init__(self, filepath, keep=None):
        super().__init__()
        self.filepath = str(filepath)
        if not self.filepath.endswith(".weights.h5"):
            raise ValueError(f"checkpoint file names must end in .weights.h5, got {self.filepath}")
        if keep is not None and int(keep) < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        self.keep = None if keep is None else int(keep)
        self.written = []

    @property
    def last(self):
        return self.written[-1] if self.written else None

    def on_epoch_end(self, epoch, logs=None):
        path = save_checkpoint(self.model, self.filepath.format(epoch=epoch + 1))
        if path in self.written:
            self.written.remove(path)  # a fixed name ("latest") is rewritten in place
        self.written.append(path)
        while self.keep is not None and len(self.written) > self.keep:
            self.written.pop(0).unlink(missing_ok=True)
