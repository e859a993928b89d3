"""What a training run records: metrics.jsonl (one line per step) and a Chrome trace (one track per rank)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


def write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


class MetricsWriter:
    """Appends one JSON object per line; rank 0 only (others get a writer that does nothing)."""

    def __init__(self, path: Path | None, resume: bool = False):
        self.file = open(path, "a" if resume else "w") if path else None

    def write(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


class Timeline:
    """Spans (name, start, duration, thread) on this rank, for a Chrome/Perfetto trace."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.events = []
        self.lock = threading.Lock()

    def add(self, name: str, start: float, duration: float, thread: str = "main") -> None:
        with self.lock:
            self.events.append((name, start - self.t0, duration, thread))

    def span(self, name: str, thread: str = "main"):
        timeline = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timeline.add(name, self.start, time.perf_counter() - self.start, thread)
        return _Span()


def write_chrome_trace(path: Path, per_rank_events: list[list]) -> None:
    """Chrome trace JSON (loads in Perfetto / chrome://tracing): pid = rank, one tid per thread."""
    out = []
    for rank, events in enumerate(per_rank_events):
        out.append({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}})
        threads = sorted({e[3] for e in events}, key=lambda t: t != "main")
        for tid, thread in enumerate(threads):
            out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": thread}})
        tids = {t: i for i, t in enumerate(threads)}
        out += [{"name": name, "ph": "X", "pid": rank, "tid": tids[thread], "ts": start * 1e6, "dur": dur * 1e6}
                for name, start, dur, thread in events]
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps({"traceEvents": out, "displayTimeUnit": "ms"})))
