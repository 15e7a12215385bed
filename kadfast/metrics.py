"""Prometheus metrics without dependencies: a small registry rendered in the
text exposition format 0.0.4, and a minimal asyncio HTTP server for it.

::

    m = Metrics()
    m.counter("kad_requests_total", "Inbound kad requests by type")
    m.inc("kad_requests_total", {"type": "FIND_NODE"})
    m.gauge("kad_routing_peers", "Peers in the routing table", lambda: len(node.table))
    m.observe("kad_query_seconds", 0.42)       # histogram with fixed buckets
    server = await serve_metrics(m, "127.0.0.1", 9464)   # GET /metrics

Counters and histograms are declared on first use (``counter``/``histogram``
declare them ahead with their help text; ``counter(..., fn=...)`` reads a
count kept elsewhere at scrape time). Gauges are callbacks read at scrape
time; a callback returns a number, or an iterable of ``(labels, value)`` pairs
for a labelled gauge. A callback that raises is left out of that scrape (and
logged) rather than failing the whole scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping

__all__ = ["Metrics", "serve_metrics", "CONTENT_TYPE", "DEFAULT_BUCKETS", "MAX_REQUEST_HEAD"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: upper bounds (seconds) of the default duration buckets
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: largest request line + headers accepted by :func:`serve_metrics`
MAX_REQUEST_HEAD = 8 * 1024
#: seconds a client has to send its request head
REQUEST_TIMEOUT = 10.0

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelKey = tuple[tuple[str, str], ...]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")


def _label_key(labels: Mapping[str, object] | None) -> LabelKey:
    if not labels:
        return ()
    for k in labels:
        if not isinstance(k, str) or not _LABEL_RE.match(k) or k.startswith("__"):
            raise ValueError(f"invalid label name {k!r}")
        if k == "le":
            raise ValueError("the label name 'le' is reserved for histogram buckets")
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels_text(key: LabelKey, extra: tuple[str, str] | None = None) -> str:
    items = list(key)
    if extra is not None:
        items.append(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in items) + "}"


class _Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1


class _Family:
    __slots__ = ("name", "type", "help", "samples", "fn", "buckets")

    def __init__(self, name: str, type_: str, help_: str) -> None:
        self.name = name
        self.type = type_
        self.help = help_
        #: a number per label set (counter), or a _Histogram (histogram)
        self.samples: dict[LabelKey, Any] = {}
        self.fn: Callable[[], object] | None = None
        self.buckets: tuple[float, ...] = DEFAULT_BUCKETS


class Metrics:
    """A registry of counters, callback gauges and duration histograms."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def _family(self, name: str, type_: str, help_: str = "") -> _Family:
        fam = self._families.get(name)
        if fam is None:
            _check_name(name)
            for suffix in ("_count", "_sum", "_bucket"):
                # a histogram's series must not collide with another family's
                if type_ == "histogram" and name + suffix in self._families:
                    raise ValueError(f"histogram {name!r} collides with metric {name + suffix!r}")
                base = self._families.get(name.removesuffix(suffix)) if name.endswith(suffix) else None
                if base is not None and base.type == "histogram":
                    raise ValueError(f"metric {name!r} collides with histogram {base.name!r}")
            fam = self._families[name] = _Family(name, type_, help_)
        elif fam.type != type_:
            raise ValueError(f"metric {name!r} is a {fam.type}, not a {type_}")
        elif help_ and not fam.help:
            fam.help = help_
        return fam

    # -- counters --------------------------------------------------------
    def counter(self, name: str, help: str = "", fn: Callable[[], object] | None = None) -> None:
        """Declare a counter (optional: :meth:`inc` declares on first use).
        With ``fn`` its values are read at scrape time, as a gauge's are (a
        count kept elsewhere, e.g. ``KadNode.request_counts``)."""
        if fn is not None and not callable(fn):
            raise TypeError("counter callback must be callable")
        with self._lock:
            fam = self._family(name, "counter", help)
            if fn is not None:
                fam.fn = fn

    def inc(self, name: str, labels: Mapping[str, object] | None = None, value: float = 1) -> None:
        """Add ``value`` (>= 0) to the counter ``name`` with ``labels``."""
        if value < 0:
            raise ValueError(f"counter {name!r} can only increase (got {value})")
        key = _label_key(labels)
        with self._lock:
            fam = self._family(name, "counter")
            fam.samples[key] = fam.samples.get(key, 0) + value

    # -- gauges ----------------------------------------------------------
    def gauge(self, name: str, help: str, fn: Callable[[], object]) -> None:
        """Register a gauge read at scrape time: ``fn()`` returns a number, or
        an iterable of ``(labels_dict, value)`` pairs. Registering the name
        again replaces the callback."""
        if not callable(fn):
            raise TypeError("gauge callback must be callable")
        with self._lock:
            fam = self._family(name, "gauge", help)
            fam.fn = fn
            if help:
                fam.help = help

    # -- histograms ------------------------------------------------------
    def histogram(self, name: str, help: str = "", buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        """Declare a histogram with its bucket upper bounds (optional:
        :meth:`observe` declares one with :data:`DEFAULT_BUCKETS`)."""
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds or len(set(bounds)) != len(bounds) or any(math.isnan(b) for b in bounds):
            raise ValueError("histogram buckets must be distinct finite numbers")
        with self._lock:
            fam = self._family(name, "histogram", help)
            if fam.samples and fam.buckets != bounds:
                raise ValueError(f"histogram {name!r} already has observations with other buckets")
            fam.buckets = bounds

    def observe(self, name: str, seconds: float, labels: Mapping[str, object] | None = None) -> None:
        """Record one duration (or any value) in the histogram ``name``."""
        seconds = float(seconds)
        if math.isnan(seconds):
            raise ValueError("cannot observe NaN")
        key = _label_key(labels)
        with self._lock:
            fam = self._family(name, "histogram")
            h = fam.samples.get(key)
            if h is None:
                h = fam.samples[key] = _Histogram(fam.buckets)
            h.observe(seconds)

    @contextlib.contextmanager
    def timer(self, name: str, labels: Mapping[str, object] | None = None):
        """``with metrics.timer("x_seconds"): ...`` observes the block's duration."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(name, time.perf_counter() - start, labels)

    # -- reading ---------------------------------------------------------
    def value(self, name: str, labels: Mapping[str, object] | None = None) -> float:
        """Current value of a counter (0 when never incremented)."""
        with self._lock:
            fam = self._families.get(name)
            if fam is None or fam.type != "counter":
                return 0
            return fam.samples.get(_label_key(labels), 0)

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format 0.0.4."""
        with self._lock:
            snapshot = []
            for fam in self._families.values():
                samples: dict[LabelKey, Any]
                if fam.type == "histogram":
                    samples = {k: (tuple(h.counts), h.sum, h.count) for k, h in fam.samples.items()}
                else:
                    samples = dict(fam.samples)
                snapshot.append((fam.name, fam.type, fam.help, fam.fn, fam.buckets, samples))
        out: list[str] = []
        for name, type_, help_, fn, buckets, samples in snapshot:
            lines: list[str] = []
            if fn is not None:  # a gauge, or a counter read at scrape time
                try:
                    lines = self._gauge_lines(name, fn)
                except Exception:
                    log.exception("metrics: %s %s failed; left out of this scrape", type_, name)
                    continue
            if type_ == "counter":
                for key, v in samples.items():
                    lines.append(f"{name}{_labels_text(key)} {format_value(v)}")
            elif type_ == "histogram":
                for key, (counts, total, count) in samples.items():
                    cumulative = 0
                    for upper, c in zip(buckets, counts):
                        cumulative += c
                        lines.append(f"{name}_bucket{_labels_text(key, ('le', format_value(upper)))} {cumulative}")
                    lines.append(f"{name}_bucket{_labels_text(key, ('le', '+Inf'))} {count}")
                    lines.append(f"{name}_sum{_labels_text(key)} {format_value(total)}")
                    lines.append(f"{name}_count{_labels_text(key)} {count}")
            if help_:
                out.append(f"# HELP {name} {escape_help(help_)}")
            out.append(f"# TYPE {name} {type_}")
            out.extend(lines)
        return "\n".join(out) + "\n" if out else ""

    @staticmethod
    def _gauge_lines(name: str, fn) -> list[str]:
        if fn is None:
            return []
        got = fn()
        if got is None:
            return []
        if isinstance(got, (int, float)):
            return [f"{name} {format_value(got)}"]
        if isinstance(got, Mapping):
            raise TypeError("a gauge callback returns a number or (labels, value) pairs")
        return [f"{name}{_labels_text(_label_key(labels))} {format_value(v)}" for labels, v in got]


# -- HTTP ------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: str = "", head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


async def serve_metrics(metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` (and HEAD) with ``metrics.render()``; 404 for
    other paths, 405 for other methods, 400 for a malformed request. One
    request per connection, closed after the response. A request head
    (request line and headers) over :data:`MAX_REQUEST_HEAD` bytes, or not
    complete within :data:`REQUEST_TIMEOUT` seconds, is dropped: the
    connection is closed without a response. The port bound is
    ``server.sockets[0].getsockname()[1]``; stop with ``server.close()``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                return  # oversized, truncated or too slow: drop
            if len(head) > MAX_REQUEST_HEAD:
                return
            writer.write(_answer(metrics, head))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:  # pragma: no cover - a bug; keep serving
            log.exception("metrics: request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_HEAD)


def _answer(metrics: Metrics, head: bytes) -> bytes:
    try:
        request_line = head.split(b"\r\n", 1)[0].decode("ascii")
        method, target, version = request_line.split(" ")
    except (UnicodeDecodeError, ValueError):
        return _response(400, b"bad request\n")
    if not version.startswith("HTTP/1."):
        return _response(400, b"bad request\n")
    path = target.split("?", 1)[0]
    if path != "/metrics":
        return _response(404, b"not found\n", head_only=method == "HEAD")
    if method not in ("GET", "HEAD"):
        return _response(405, b"method not allowed\n", extra="Allow: GET, HEAD\r\n")
    try:
        body = metrics.render().encode("utf-8")
    except Exception:
        log.exception("metrics: render failed")
        return _response(500, b"render failed\n", head_only=method == "HEAD")
    return _response(200, body, CONTENT_TYPE, head_only=method == "HEAD")
