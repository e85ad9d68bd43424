"""Download a zoo checkpoint once, verify it, keep it: :func:`fetch`.

Files on Hugging Face (``https://huggingface.co/<repo>/resolve/<revision>/<file>``) come
through ``huggingface_hub.hf_hub_download`` (its endpoint: ``$HF_ENDPOINT``, as everywhere
in ``huggingface_hub``); any other URL through ``pooch``. Both show a tqdm progress bar.

The cache is ``$SOLO_TF_HOME`` (default: the user's cache folder, ``~/.cache/solo_tf`` on
Linux): ``checkpoints/<name>/<file>``, each beside a ``<file>.sha256`` that records a
verified hash. A download goes to a private folder under ``.partial/`` first and is moved
into place only once its sha256 matches the pinned one (all 64 digits, or mmdetection's
8-digit prefix; an entry without a pinned hash is taken as it comes, and says so). An
interrupted or refused download leaves nothing in the cache. A file put in the cache by
hand (where the offline message says) is verified on first use, and removed if it does not
match.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from solo_tf.zoo.registry import ZooEntry, get

_HF_URL = re.compile(r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
HASH_SUFFIX = ".sha256"


class ZooDownloadError(OSError):
    """A checkpoint could not be downloaded (no network, an interrupted transfer, an HTTP
    error); nothing was kept in the cache."""


class ZooHashError(ValueError):
    """A downloaded (or hand-placed) checkpoint does not match its pinned sha256; it was not kept."""


def home() -> Path:
    """The cache folder: ``$SOLO_TF_HOME``, else the user's cache folder (``~/.cache/solo_tf``)."""
    env = os.environ.get("SOLO_TF_HOME")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("solo_tf"))


def checkpoint_path(name: str | ZooEntry) -> Path:
    """Where the checkpoint of zoo entry ``name`` is (or will be) cached."""
    entry = _entry(name)
    return home() / "checkpoints" / entry.name / entry.filename


def fetch(name: str | ZooEntry, *, progress: bool = True) -> Path:
    """The verified checkpoint file of zoo entry ``name``, downloaded on first use.

    Raises:
        KeyError: no such entry.
        ValueError: an entry solo-tf cannot run (the reason is in the message).
        ZooDownloadError: no network (the message names the URL, where to put the file by
            hand and how to use a local copy instead), an interrupted transfer, an HTTP error.
        ZooHashError: the file's sha256 is not the pinned one (it is not kept).
    """
    entry = _entry(name)
    if not entry.supported:
        raise ValueError(f"zoo model {entry.name!r} does not run in solo-tf: {entry.unsupported}")
    dest = checkpoint_path(entry)
    if dest.is_file():
        if _recorded_hash(dest) is None:  # put there by hand: check it once
            try:
                _record(dest, _verify(entry, dest, where=f"the file at {dest}"))
            except ZooHashError as e:
                dest.unlink(missing_ok=True)
                raise ZooHashError(f"{e}; it was removed from the cache") from None
        return dest
    partial_root = home() / ".partial"
    partial_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{entry.name}.", dir=partial_root))
    try:
        got = _download(entry, tmp, dest, progress)
        digest = _verify(entry, got, where=f"the download of {entry.url}")
        if entry.sha256 is None:
            warnings.warn(f"zoo model {entry.name!r}: no published sha256 to check {entry.url} against; what was "
                          f"downloaded has sha256 {digest} (recorded beside it in the cache)", stacklevel=2)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, dest)
        _record(dest, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- helpers ---------------------------------------------------------------------------------------


def _entry(name):
    return name if isinstance(name, ZooEntry) else get(name)


def source_url(entry: ZooEntry) -> str:
    """The URL a download of ``entry`` requests: a Hugging Face file from ``$HF_ENDPOINT``
    where that is set (a mirror; huggingface_hub's own setting), any other as pinned."""
    m = _HF_URL.match(entry.url)
    endpoint = os.environ.get("HF_ENDPOINT")
    if m and endpoint:
        return f"{endpoint.rstrip('/')}/{m['repo']}/resolve/{m['revision']}/{m['file']}"
    return entry.url


def _download(entry, tmp, dest, progress):
    """Download ``entry.url`` into the folder ``tmp``; the downloaded file's path."""
    m = _HF_URL.match(entry.url)
    if progress:
        size = f" ({entry.row()['size']})" if entry.size or entry.size_mb else ""
        print(f"[solo-tf] downloading zoo model {entry.name}{size} from {source_url(entry)}", file=sys.stderr)
    try:
        if m:
            return Path(_hf_download(m, tmp, progress))
        import pooch

        logger = pooch.get_logger()
        level = logger.level
        logger.setLevel(logging.WARNING)  # not its advice to pin the hash it saw: solo-tf pins its own
        try:
            return Path(pooch.retrieve(entry.url, known_hash=None, fname=entry.filename, path=tmp,
                                       progressbar=progress))
        finally:
            logger.setLevel(level)
    except Exception as e:  # each library's own errors, classified for the message
        raise ZooDownloadError(_download_failure(entry, dest, e)) from e


def _hf_download(m, tmp, progress):
    from huggingface_hub import hf_hub_download

    kwargs = {}
    if not progress:
        from tqdm.auto import tqdm

        class _Quiet(tqdm):
            def __init__(self, *args, **kw):
                kw["disable"] = True
                super().__init__(*args, **kw)

        kwargs["tqdm_class"] = _Quiet
    return hf_hub_download(m["repo"], m["file"], revision=m["revision"], local_dir=tmp,
                           endpoint=os.environ.get("HF_ENDPOINT") or None, **kwargs)


def _download_failure(entry, dest, e):
    """The message of a failed download: which failure, and what the user can do."""
    host = urlsplit(source_url(entry)).netloc
    manual = (f"Download it another way ({entry.url}) and put it at {dest} (solo-tf checks its sha256 on first "
              f"use), or convert a copy you have: solo_tf.zoo.convert({entry.name!r}, "
              f"checkpoint='/path/to/{entry.filename}')")
    kind, detail = _classify(e)
    if kind == "offline":
        return f"cannot download zoo model {entry.name!r}: no connection to {host} ({detail}). {manual}"
    if kind == "http":
        return f"cannot download zoo model {entry.name!r}: {host} answered {detail} for {source_url(entry)}. {manual}"
    return (f"the download of zoo model {entry.name!r} from {source_url(entry)} was interrupted ({detail}); "
            f"nothing was kept in the cache: run it again to start over. {manual}")


def _classify(e):
    """("offline" | "http" | "interrupted", detail) of a download exception."""
    detail = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    try:
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
        )

        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            cause = e.__cause__ or e.__context__
            return "offline", f"{type(cause).__name__}: {cause}".splitlines()[0][:300] if cause else detail
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            return "http", f"HTTP {e.response.status_code}"
    except ImportError:
        pass
    try:
        import requests
        import urllib3

        if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
            return "http", f"HTTP {e.response.status_code}"
        if isinstance(e, requests.exceptions.ConnectionError):
            reason = getattr(e.args[0], "reason", None) if e.args else None
            if isinstance(reason, urllib3.exceptions.NewConnectionError) or isinstance(
                    e, requests.exceptions.ConnectTimeout):
                return "offline", detail
    except ImportError:
        pass
    return "interrupted", detail


def _verify(entry, path, where):
    """The file's sha256 if it matches the entry's pin (or there is none); ZooHashError if not."""
    digest = sha256_of(path)
    if entry.sha256 is not None and not digest.startswith(entry.sha256):
        pinned = (entry.sha256 if len(entry.sha256) == 64
                  else f"{entry.sha256}... (the prefix in mmdetection's file name)")
        raise ZooHashError(f"zoo model {entry.name!r}: {where} has sha256 {digest}, not the pinned {pinned}: the file "
                           "is corrupted or changed upstream, so it was not kept")
    return digest


def _recorded_hash(path):
    side = path.with_name(path.name + HASH_SUFFIX)
    return side.read_text().strip() if side.is_file() else None


def _record(path, digest):
    from solo_tf.io import write_text

    write_text(path.with_name(path.name + HASH_SUFFIX), digest + "\n")
