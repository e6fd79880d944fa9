"""Cold-start cost of the main job: `easynlp --mode=predict` on the embedded default model.

    python bench/demo.py [--repeat 3]

Runs the predict command in a fresh process for a one-prompt table (time to the first image,
imports and model loading included) and for the 12 demo prompts × 4 images, and reports wall
time and the peak resident memory of the process (DESIGN budget: first image ≤ 10 s, ≤ 1.5 GB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(table: Path, out: Path, images: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one predict process."""
    exe = Path(sys.executable).with_name("easynlp")
    cmd = [str(exe), "--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={out}",
           f"--user_defined_parameters=max_generated_num={images}"]
    start = time.perf_counter()
    pid = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"predict failed with status {status}: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.tsv"
        one.write_text("0\t一个番茄\n", encoding="utf-8")
        for label, table, images in (("first image (1 prompt × 1)", one, 1),
                                     ("demo table (12 prompts × 4)", ROOT / "examples" / "prompts.tsv", 4)):
            runs = [run(table, Path(tmp) / "out.tsv", images) for _ in range(args.repeat)]
            walls, rss = [w for w, _ in runs], [r for _, r in runs]
            print(f"{label}: wall median {statistics.median(walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}), "
                  f"peak RSS {max(rss):.0f} MB")
    print(f"load average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
