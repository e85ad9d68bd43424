"""What ``predict`` is pointed at, read on the host frame by frame; and the annotated video
written back (its frames drawn by :func:`solo_tf.visualize.annotate_frame`).

Sources (:func:`expand_sources`): an image file; a folder (its image and video files, sorted
by name, not recursive); a glob (``"shots/*.jpg"``, ``"**"`` recursive); a video file
(:data:`VIDEO_EXTENSIONS`); a camera index (``0``, or a device path such as ``/dev/video0``);
a stream URL (``rtsp://``, ``http(s)://``, ``rtmp://``, ``udp://``, ``file://`` ...). A
source that is not there is an error naming it, before any work; what cannot be read while
reading is named, counted in a :class:`SkipLog` and skipped, and the run goes on:

* a file of a folder or glob that is neither an image nor a video (by extension);
* an image file that does not decode;
* a video (or camera, or stream) that does not open, or has no video stream;
* a video frame that does not decode (the frames around it are kept);
* a video that ends early (a truncated file: fewer frames than its header says, or a read
  error part-way).

Videos, cameras and streams are decoded with PyAV (FFmpeg's libraries, in its wheels), one
frame at a time: nothing holds a whole video. :class:`Prefetch` runs a reader in a thread a
bounded number of frames ahead, so decoding overlaps the network . :class:`VideoWriter`
writes an annotated video whole or not at all (:func:`solo_tf.io.atomic_path`), at the
source's frame rate, each frame at its source timestamp.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".ts", ".3gp"})
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
DEFAULT_FPS = 30.0  # an annotated video's rate when its source (a camera, a stream) gives none

# Skip reasons: the keys of SkipLog.counts() and of the run summary.
NOT_MEDIA = "not an image or video"
BAD_IMAGE = "unreadable image"
BAD_VIDEO = "unreadable video"
BAD_FRAME = "corrupt video frame"
ENDED_EARLY = "video ended early"


@dataclasses.dataclass(frozen=True)
class Source:
    """One thing to read.

    ``kind``: ``image``, ``video``, ``camera`` or ``stream``. ``target``: what is opened (a
    path, a device, a URL). ``name``: what outputs and messages call it (the path as given,
    ``camera 0``, the URL). ``stem``: the base of its output file names. ``frames``: the
    number of frames its header announces (1 for an image; None when unknown: a camera, a
    stream, a video without a count)."""

    kind: str
    target: str
    name: str
    stem: str
    frames: int | None = None

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def live(self) -> bool:
        """A camera or stream: read until it ends or the run is interrupted."""
        return self.kind in ("camera", "stream")


@dataclasses.dataclass
class Frame:
    """One decoded frame: ``image`` (h, w, 3) uint8 RGB; ``index`` its number in its video
    (from its timestamp, so a frame lost to corruption leaves a gap; None for an image
    file); ``fps`` the video's frame rate (None for an image file, or unknown)."""

    source: Source
    index: int | None
    image: np.ndarray
    fps: float | None = None


class SkipLog:
    """What a run skipped: each entry named (the file, or the file and frame) with its reason.

    ``log``: called with one line per skip as it happens (e.g. a console printer); None:
    silent, read the entries afterwards."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.entries: list[tuple[str, str, str]] = []  # (name, reason, detail)
        self.log = log
        self._lock = threading.Lock()  # the reader thread adds, the caller reads

    def add(self, name, reason: str, detail: str = "") -> None:
        with self._lock:
            self.entries.append((str(name), reason, detail))
        if self.log is not None:
            self.log(f"skipped {name}: {reason}" + (f" ({detail})" if detail else ""))

    @property
    def total(self) -> int:
        return len(self.entries)

    def counts(self) -> dict[str, int]:
        """Skips by reason, in the order the reasons were first met."""
        with self._lock:
            return dict(collections.Counter(reason for _, reason, _ in self.entries))

    def summary(self, examples: int = 3) -> str:
        """``"skipped 3: 2 unreadable image (a.png, b.jpg), 1 not an image or video (notes.txt)"``."""
        if not self.entries:
            return "skipped nothing"
        parts = []
        for reason, n in self.counts().items():
            names = [name for name, r, _ in self.entries if r == reason]
            shown = ", ".join(names[:examples]) + (", ..." if len(names) > examples else "")
            parts.append(f"{n} {reason} ({shown})")
        return f"skipped {self.total}: " + ", ".join(parts)


# --- finding the sources ---------------------------------------------------------------------------
def expand_sources(sources, skipped: SkipLog | None = None) -> list[Source]:
    """What the user named -> the sources to read, in order.

    Args:
        sources: one or a list of: a path (image, video, folder), a glob, a camera index
            (int or digits) or device path, a URL (or a :class:`Source`, kept as it is).
        skipped: where files of a folder or glob that are neither images nor videos are
            counted (hidden files are ignored).

    Raises:
        FileNotFoundError: a path that does not exist, a glob that matches nothing, or
            nothing to read at all; the message names it.
    """
    if isinstance(sources, (str, os.PathLike, int, Source)):
        sources = [sources]
    skipped = skipped if skipped is not None else SkipLog()
    out: list[Source] = []
    for item in sources:
        if isinstance(item, Source):
            out.append(item)
            continue
        if isinstance(item, bool) or not isinstance(item, (str, os.PathLike, int)):
            raise TypeError(f"a source is a path, a glob, a URL or a camera index, got {item!r}")
        if isinstance(item, int):
            out.append(_camera(item))
            continue
        text = os.fspath(item)
        path = Path(text)
        if _URL.match(text):
            out.append(Source("stream", text, text, _stem_of_url(text)))
        elif text.isdigit() and not path.exists():
            out.append(_camera(int(text)))
        elif path.is_dir():
            out += _listed(sorted(p for p in path.iterdir() if p.is_file()), skipped)
        elif path.is_file():
            # named on purpose: a video by its extension, anything else is tried as an image
            out.append(_file_source(path) or Source("image", text, text, path.stem, 1))
        elif path.exists():  # a device: /dev/video0
            out.append(Source("camera", text, text, path.name, None))
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"no files match {text}")
            out += _listed(found, skipped)
        else:
            raise FileNotFoundError(f"not found: {text}")
    if not out:
        named = ", ".join(str(s) for s in sources)
        raise FileNotFoundError(f"no images or videos in {named}" + (f" ({skipped.summary()})" if skipped.total else ""))
    return out


def _camera(index: int) -> Source:
    if index < 0:
        raise ValueError(f"camera index must be >= 0, got {index}")
    if sys.platform.startswith("linux"):
        target = f"/dev/video{index}"
    elif sys.platform == "darwin":
        target = str(index)
    else:
        raise ValueError(f"camera {index}: a camera index is read on Linux and macOS; elsewhere give the device as "
                         "a stream URL")
    return Source("camera", target, f"camera {index}", f"camera{index}", None)


def _stem_of_url(url: str) -> str:
    tail = Path(url.split("?", 1)[0].rstrip("/")).stem or "stream"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tail) or "stream"


def _file_source(path: Path) -> Source | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return Source("image", str(path), str(path), path.stem, 1)
    if ext in VIDEO_EXTENSIONS:
        return Source("video", str(path), str(path), path.stem, _frame_count(str(path)))
    return None


def _listed(paths, skipped: SkipLog) -> list[Source]:
    out = []
    for p in paths:
        if p.name.startswith("."):
            continue
        src = _file_source(p)
        if src is None:
            skipped.add(p, NOT_MEDIA)
        else:
            out.append(src)
    return out


def _frame_count(path: str) -> int | None:
    """The frame count a video's header announces (an estimate from its duration when it
    has no count); None when it does not open (reading it reports that)."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration and stream.time_base and rate:
                return max(1, round(float(stream.duration * stream.time_base * rate)))
            if container.duration and rate:
                return max(1, round(container.duration / 1e6 * float(rate)))
    except (av.FFmpegError, OSError, ValueError):
        pass
    return None


def count_frames(sources: Iterable[Source]) -> int | None:
    """The frames the sources will give (a progress bar's total); None when any is unknown."""
    counts = [s.frames for s in sources]
    return None if any(c is None for c in counts) else sum(counts)


# --- reading -------------------------------------------------------------------------------------
def read_image(path) -> np.ndarray:
    """An image file as (h, w, 3) uint8 RGB; a clear error naming a missing or bad file."""
    try:
        return _decode_image(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except _IMAGE_ERRORS as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


# PIL raises any of these on bad data (SyntaxError from some plugins' header parsers)
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError)


def _decode_image(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:  # UnidentifiedImageError is an OSError
        return np.asarray(im.convert("RGB"))


def read_frames(sources: Iterable[Source], skipped: SkipLog | None = None) -> Iterator[Frame]:
    """Every frame of every source, in order; what cannot be read goes to ``skipped``."""
    skipped = skipped if skipped is not None else SkipLog()
    for source in sources:
        if source.is_image:
            try:
                image = _decode_image(source.target)
            except _IMAGE_ERRORS as e:  # FileNotFoundError too: a file removed since it was listed
                skipped.add(source.name, BAD_IMAGE, str(e))
                continue
            yield Frame(source, None, image)
        else:
            yield from video_frames(source, skipped)


def _open_video(source: Source):
    import av

    if source.kind == "camera":
        fmt = "v4l2" if sys.platform.startswith("linux") else "avfoundation"
        return av.open(source.target, format=fmt)
    if source.kind == "stream":
        # a stalled network read gives up after 10 s instead of hanging the run
        return av.open(source.target, timeout=10.0)
    return av.open(source.target)


def video_frames(source: Source, skipped: SkipLog | None = None) -> Iterator[Frame]:
    """The frames of one video, camera or stream, decoded one packet at a time.

    A packet that does not decode is counted (:data:`BAD_FRAME`) and the next is read; a
    read error, or fewer frames than the header announced, ends the video
    (:data:`ENDED_EARLY`) with what was read kept. Each frame's index comes from its
    timestamp (``round(t * fps)``, kept increasing), so lost frames leave gaps."""
    import av

    skipped = skipped if skipped is not None else SkipLog()
    try:
        container = _open_video(source)
    except (av.FFmpegError, OSError, ValueError) as e:
        skipped.add(source.name, BAD_VIDEO, _reason(e))
        return
    with container:
        if not container.streams.video:
            skipped.add(source.name, BAD_VIDEO, "no video stream")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's own decoding threads (the GIL is released while they run)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        start = stream.start_time or 0
        last = -1
        decoded = 0

        def index_of(pts):
            if pts is None or not fps or stream.time_base is None:
                return last + 1
            return max(last + 1, round(float((pts - start) * stream.time_base) * fps))

        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as e:
                skipped.add(source.name, ENDED_EARLY, f"after frame {last}: {_reason(e)}")
                return
            try:
                frames = packet.decode()
            except (av.FFmpegError, ValueError) as e:
                skipped.add(f"{source.name} frame {index_of(packet.pts)}", BAD_FRAME, _reason(e))
                continue
            for frame in frames:
                last = index_of(frame.pts)
                decoded += 1
                yield Frame(source, last, frame.to_ndarray(format="rgb24"), fps)
        if source.kind == "video" and source.frames and last + 1 < source.frames:
            missing = source.frames - (last + 1)
            skipped.add(source.name, ENDED_EARLY, f"{decoded} of {source.frames} frames decoded, the last "
                                                  f"{missing} missing")


def _reason(e: BaseException) -> str:
    return str(getattr(e, "strerror", None) or e)


_DONE = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetch:
    """``items`` iterated in a reader thread, up to ``size`` ahead of the caller.

    Iterate it as ``items``. An exception in the reader is raised in the caller at the point
    it would have been met. ``close()`` (or leaving a ``with`` block) stops the reader and
    closes ``items``. ``ready()`` says whether an item is waiting: a reader that batches a
    live source hands over what it has when the caller would otherwise wait (give it the
    Prefetch: ``p = Prefetch(size=2); p.start(batches(frames, p))``)."""

    def __init__(self, items: Iterable | None = None, size: int = 1):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(size)))
        self._stop = threading.Event()
        self._done = False
        self._reader = None
        if items is not None:
            self.start(items)

    def start(self, items: Iterable) -> None:
        """Start reading ``items`` (once)."""
        if self._reader is not None:
            raise RuntimeError("Prefetch: already started")
        self._reader = threading.Thread(target=self._work, args=(iter(items),), name="solo-tf-reader", daemon=True)
        self._reader.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, it):
        try:
            for item in it:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the caller, raised there
            self._put(_Raised(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE or isinstance(item, _Raised):
            self.close()
            if item is _DONE:
                raise StopIteration
            raise item.error
        return item

    def ready(self) -> bool:
        return not self._queue.empty()

    def close(self) -> None:
        self._done = True
        self._stop.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)  # a live source blocked in a read ends with the process (daemon)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- writing ------------------------------------------------------------------------------------
class VideoWriter:
    """An MP4 (H.264 where PyAV has it, else MPEG-4 Part 2) written whole or not at all.

    Frames go to a temporary file beside ``path`` (:func:`solo_tf.io.atomic_path`); ``close``
    finishes the file and moves it into place, ``abort`` removes it. Frame ``index`` sets its
    timestamp (``index / fps``), so a gap in the source's frames stays a gap in time. Frames
    of an odd width or height are padded by one edge row/column (4:2:0 needs even sizes)."""

    def __init__(self, path, fps: float | None):
        from solo_tf.io import atomic_path

        self.path = Path(path)
        self.rate = Fraction(fps or DEFAULT_FPS).limit_denominator(100_000)
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._container = None
        self._stream = None
        self._last = -1
        self.frames = 0

    def _open(self, h, w):
        import av

        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._container = av.open(str(self._tmp), mode="w")
        self._stream = self._container.add_stream(codec, rate=self.rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}

    def write(self, image: np.ndarray, index: int | None = None) -> None:
        """Append an (h, w, 3) uint8 RGB frame (all frames one size) at frame ``index``."""
        import av

        image = np.asarray(image, np.uint8)
        h, w = image.shape[:2]
        if self._container is None:
            self._open(h, w)
        if (h + h % 2, w + w % 2) != (self._stream.height, self._stream.width):
            raise ValueError(f"{self.path}: frame of {h}x{w} in a video of {self._stream.height}x{self._stream.width}")
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        self._last = max(self._last + 1, -1 if index is None else int(index))
        frame.pts = self._last
        frame.time_base = 1 / self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; None (nothing written) when no frame came."""
        try:
            if self._container is None:
                self.abort()
                return None
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
        except BaseException:
            self.abort()
            raise
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; ``path`` is left as it was."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def safe_name(text: str) -> str:
    """``text`` usable in a file name (letters, digits, ``_.-``; other runs become ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"
