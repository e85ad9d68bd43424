"""Files that appear whole or not at all.

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
