"""Shared pieces of the benchmarks: rows of the result table, timing, child-process RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
BIN = Path(sys.executable).parent


@dataclass
class Row:
    bench: str
    measure: str
    freight: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None = None


def run_child(cmd: list[str], *, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a command to completion; (wall seconds, peak RSS in MB of that child).

    The peak RSS is read from wait4()'s rusage of this very child, not RUSAGE_CHILDREN (which
    keeps the maximum over every child this process ever had).
    """
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{cmd[:3]} exited {code}: {stderr[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def self_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
