"""One result per case, for pytest to judge: a test program calls ``case(name, ok, line, **measured)`` on rank 0.

It prints the human line (``ok  ``/``FAIL`` and what was measured) and, after it, a machine line
``CASE {"name": ..., "ok": ..., ...}`` that ``conftest.cases`` reads back, so a test asserts on each case by name
instead of counting printed words.
"""
from __future__ import annotations

import json


def case(name: str, ok: bool, line: str, **measured) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)
    print("CASE " + json.dumps({"name": name, "ok": bool(ok), **measured}, default=float), flush=True)
