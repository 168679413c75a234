"""Shared pieces of the benchmarks: rows of the result table, timing, child-process RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
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
    """Run a command to completion; (wall seconds, peak RSS in MB of that child, ``wait_with_peak``)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    status, _, peak_mb = wait_with_peak(proc.pid)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{cmd[:3]} exited {code}: {stderr[-2000:]}")
    return elapsed, peak_mb


def wait_with_peak(pid: int, every_s: float = 0.02) -> tuple[int, resource.struct_rusage, float]:
    """Wait for a child: (wait status, its rusage, its peak RSS in MB).

    The peak is the child's own ``VmHWM``, read from /proc every ``every_s`` until it exits, not the
    rusage's ``ru_maxrss``: Linux carries a process's peak across ``execve``, so a child spawned by a
    process bigger than it reports the parent's size (a worker started by this bench after a 1,000,000
    request run in it reported 262 MB, its own peak being a fraction of that).
    """
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], vm_hwm_mb(pid))
            done.wait(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, status, usage = os.wait4(pid, 0)
    finally:
        done.set()
        sampler.join()
    return status, usage, peak[0]


def vm_hwm_mb(pid: int | str = "self") -> float:
    """A live process's peak RSS (``VmHWM``) in MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def reset_peak_rss() -> None:
    """Start this process's ``VmHWM`` again from its current RSS (Linux: ``5`` to ``/proc/self/clear_refs``), so
    that a figure measured in process is that run's peak, not that of an earlier benchmark in the same
    ``bench/run.py`` (the engine's SQLite run reported 1,456 MB after the chat benchmarks had loaded models)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not allowed: the figure is the process's peak so far, as before
        pass


#: Seconds for ``machine_loop_s``'s loop on the machine where session 20 measured the engine at 19,903
#: requests/s on SQLite (docs/benchmarks.md, fourth round): a yardstick for this machine's figures.
REFERENCE_LOOP_S = 0.18


def machine_loop_s(steps: int = 10_000_000, repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs of an empty ``steps``-step Python loop at module level, in seconds: how fast this
    machine runs the interpreter now. Absolute figures (requests/s) move with it; same-run ratios do not."""
    # At module level, as ``python3 -c 'for i in range(10_000_000): pass'`` runs it (the loop variable a
    # global): that is how the reference machine was timed, and a function's local is about 3x faster.
    loop = compile("for i in range(steps): pass", "<machine_loop>", "exec")
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        exec(loop, {"steps": steps})
        best = min(best, time.perf_counter() - started)
    return best


def machine_row(when: str) -> Row:
    """A table row for the machine's speed ``when`` ("start", "end"): the loop's seconds against the reference
    machine's and the load average, so that absolute targets can be read on a slower or busier machine."""
    seconds = machine_loop_s()
    load = os.getloadavg()[0]
    return Row("machine", f"10M-step Python loop, s ({when}; load {load:.1f})", f"{seconds:.2f}",
               f"{REFERENCE_LOOP_S:.2f}", f"{REFERENCE_LOOP_S / seconds:.2f}x", "(speed of this machine)")
