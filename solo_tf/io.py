"""Files that appear whole or not at all, and model files that load in a new process.

Every writer in solo-tf goes through :func:`atomic_path`: the content is written to a
temporary name in the destination's folder and moved into place with ``os.replace`` (atomic
on one file system), so an interrupted or failed write leaves the old file, or nothing,
never a partial one. :func:`atomic_dir` does the same for a folder (a SavedModel, an export).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; on success move it to ``path``.

    Args:
        path: the destination file.
        suffix: the temporary name's suffix (default: ``path``'s, as writers that pick a
            format from the extension need, e.g. ``.keras`` or ``.png``).

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is removed only after the new folder is complete. On an exception
    the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path, obj, indent=None, compact=False) -> Path:
    """``obj`` as JSON (numpy scalars and arrays converted); ``compact`` drops the spaces
    after separators (large annotation files)."""
    separators = (",", ":") if compact else None
    return write_text(path, json.dumps(obj, indent=indent, separators=separators, default=_json_default))


def _json_default(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def register_custom_objects() -> None:
    """Import every module that registers Keras classes a solo-tf file may reference (the
    model, its layers, the decoder, the optimizers and schedules), so that
    ``keras.saving.load_model`` finds them in a fresh process."""
    import solo_tf.inference  # noqa: F401
    import solo_tf.model  # noqa: F401
    import solo_tf.training  # noqa: F401


def load_model(path):
    """Load a ``.keras`` file written by solo-tf (any process, any backend)."""
    import keras

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
    import keras

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
    import re

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
    from keras import ops

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # the file's optimizer variables need a home
    model.load_weights(path)
    return int(ops.convert_to_numpy(model.optimizer.iterations)) if model.optimizer is not None else 0
