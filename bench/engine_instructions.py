"""The work per request of the engine's path, counted in CPU instructions instead of seconds.

On a shared machine, seconds move by 15-20% from one process to the next, and a machine three times
slower or faster changes every absolute figure: neither says whether a change made the path cheaper.
Instructions do: ``valgrind --tool=callgrind`` counts them, the same total for the same code and input
whatever else the machine is doing. This runs ``engine_floor.py``'s loop (the store calls and the
scripted backend of ``freight run``, upload to output file, on one thread) under callgrind at two
sizes and prints the instructions per request of the difference, so that start-up (imports,
compiling, the model-free set-up) cancels out. A Python process runs about 50x slower under valgrind:
the default sizes take about a minute each.

    python bench/engine_instructions.py                 # 1,000 and 6,000 requests
    python bench/engine_instructions.py --sizes 1000 11000

Not in ``make bench`` (it needs a minute or two and valgrind); a figure to compare commits with.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLOOR = Path(__file__).resolve().parent / "engine_floor.py"


def instructions(n: int) -> int:
    """Instructions of one whole ``engine_floor.py n`` process."""
    with tempfile.TemporaryDirectory(prefix="freight-bench-ir-") as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                               str(FLOOR), str(n)], capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind failed ({done.returncode}): {done.stderr[-2000:]}")
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 6000], metavar=("SMALL", "LARGE"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    small, large = sorted(args.sizes)
    if large <= small:
        sys.exit("the two sizes must differ")
    counts = {n: instructions(n) for n in (small, large)}
    per_request = (counts[large] - counts[small]) / (large - small)
    print(f"engine floor: {per_request:,.0f} instructions per request "
          f"({counts[small]:,} at {small:,} requests, {counts[large]:,} at {large:,})")


if __name__ == "__main__":
    main()
