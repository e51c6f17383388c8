"""Wall time and peak RSS of `kv-transition all -c config/default.yaml` on a fresh home.

    .venv/bin/python benchmarks/e2e_default.py [--config config/default.yaml] [--reps 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def one_run(config: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as home:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kv_transition", "--home", home, "all", "-c", config,
                        "--no-progress"], check=True, capture_output=True)
        wall = time.perf_counter() - start
    # children's peak RSS so far (KiB on Linux): the max over the runs made by this process
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/default.yaml")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    runs = [one_run(args.config) for _ in range(args.reps)]
    lines = [f"# end to end: kv-transition all -c {args.config} (fresh --home, model built on first use)",
             f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
             "", "| rep | wall s | peak RSS MiB (max so far) |", "|---|---|---|"]
    lines += [f"| {i + 1} | {wall:.1f} | {rss:.0f} |" for i, (wall, rss) in enumerate(runs)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e_default.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
