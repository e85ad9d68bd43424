"""Bad input reporting for the dataset readers: the error type, the skip log, a progress line.

Every reader check has one outcome per record: by default it raises :class:`DataError`
whose message names the file and the record; with ``skip_bad=True`` the record is skipped
and counted in a :class:`BadRecordLog` under a short reason, and :meth:`BadRecordLog.summary`
reports all of them. Nothing is dropped without being counted. Each reader owns its log and
hands it over (``RecordSource.bad_records``, ``build_datasets``' ``info["bad_records"]``):
there is no process-wide registry.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter


class DataError(ValueError):
    """Malformed or inconsistent input data; the message names the file and the record.

    Example: ``annotations.json: annotation id 17 (image 3): polygon with 2 points (< 3)``.
    ``reason`` is the short fixed phrase a :class:`BadRecordLog` counts it under.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


_IN_TF_ERROR = re.compile(r"DataError: (.*)")


def data_error_from(error: BaseException) -> DataError | None:
    """The DataError inside a TensorFlow error, or None if there is none.

    A DataError raised while ``tf.data`` decodes a record reaches the caller as a
    ``tf.errors.InvalidArgumentError`` whose message holds a traceback; this recovers the
    one-line message (file and record) so a CLI can print just that.
    """
    if isinstance(error, DataError):
        return error
    found = _IN_TF_ERROR.findall(str(error))
    return DataError(found[-1].strip()) if found else None


class BadRecordLog:
    """Counts skipped records per reason and keeps the first few messages of each.

    Thread-safe: tf.data calls :meth:`skip` from several decoding threads at once.

    Args:
        name: what is being read (a file name), the first word of :meth:`summary`.
        examples: messages kept per reason.
    """

    def __init__(self, name: str = "data", examples: int = 3):
        self.name = name
        self.examples = int(examples)
        self._counts: Counter = Counter()
        self._examples: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def skip(self, reason: str, message: str) -> None:
        """Record one skipped record under ``reason`` (a short fixed phrase)."""
        with self._lock:
            self._counts[reason] += 1
            kept = self._examples.setdefault(reason, [])
            if len(kept) < self.examples:
                kept.append(message)

    def handle(self, skip_bad: bool, reason: str, message: str) -> None:
        """Raise ``DataError(message)``, or with ``skip_bad`` count it and return."""
        if not skip_bad:
            raise DataError(message, reason)
        self.skip(reason, message)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def __len__(self) -> int:
        return self.total

    def summary(self) -> str:
        """One line per reason with its count and first examples; ``"<name>: no bad records"``."""
        with self._lock:
            if not self._counts:
                return f"{self.name}: no bad records"
            total = sum(self._counts.values())
            lines = [f"{self.name}: skipped {total} bad record{'s' if total != 1 else ''}"]
            for reason, n in sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {n:>7d}  {reason}")
                for msg in self._examples.get(reason, ()):
                    lines.append(f"           e.g. {msg}")
            return "\n".join(lines)

    def __repr__(self):
        return f"BadRecordLog({self.name!r}, {self.counts})"


class Progress:
    """A one-line progress printer on stderr (redrawn in place on a terminal).

    On a terminal it redraws at most every ``interval`` seconds; elsewhere (logs, CI) it
    prints a line only every ``10 * interval`` seconds and at the end, so logs stay short.
    ``enabled=False`` prints nothing.

        with Progress(len(items), "scanning annotations.json") as bar:
            for item in items:
                ...
                bar.update()
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, interval: float = 0.2, stream=None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else 10 * interval
        self.n = 0
        self._start = time.perf_counter()
        # A terminal shows the bar at once; a log gets its first line only if this is slow.
        self._last = -float("inf") if self.tty else self._start

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(now, final=False)

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter(), final=True)

    def _draw(self, now, final):
        elapsed = max(now - self._start, 1e-9)
        pct = f"{100.0 * self.n / self.total:5.1f}%" if self.total else "  -  "
        line = f"{self.desc}: {self.n}/{self.total} {pct} {self.n / elapsed:,.0f}/s {elapsed:.1f}s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        elif final or self.n < self.total:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
