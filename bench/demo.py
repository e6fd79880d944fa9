"""Cold-start cost of the main job: the README's demo command on the embedded default model.

    python bench/demo.py [--repeat 3] [--busy 1]

1. Quiet: the predict command in a fresh process for a one-prompt table (time to the first image,
   imports and model loading included) and for the 12 demo prompts × 4 images.
2. Busy: the README's demo command, unchanged, with ``--busy`` cores kept busy by bounded
   busy-loop processes this script starts (and kills at the end), interleaved over three settings:
   the defaults, ``num_threads=1``, and the defaults before thread defaults existed (torch's one
   thread per core, libgomp's default wait: ``GOMP_SPINCOUNT=300000`` is what an unset
   ``OMP_WAIT_POLICY`` means, see ``OMP_DISPLAY_ENV=verbose``).

Reports wall time and the peak resident memory of each process (DESIGN budget: first image ≤ 5 s
quiet, ≤ 10 s with the other core busy; ≤ 1.5 GB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from easynlp_artist.runtime import available_cores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py
from common import cpu_name, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("easynlp")
# the README's demo command, after the install (run from a folder holding examples/prompts.tsv)
DEMO = [str(EXE), "--app_name=text2image_artist", "--mode=predict", "--tables=examples/prompts.tsv",
        "--outputs=out/predictions.tsv", "--user_defined_parameters=max_generated_num=4 image_dir=out/images"]
BUSY_LIMIT_S = 1800  # a busy loop ends by itself even if this script is killed


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    start = time.perf_counter()
    pid = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed with status {status}: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def summary(label: str, runs: list[tuple[float, float]]) -> str:
    walls = [w for w, _ in runs]
    return (f"{label}: wall median {statistics.median(walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}), "
            f"peak RSS {max(r for _, r in runs):.0f} MB")


def quiet(tmp: Path, repeat: int) -> None:
    one = tmp / "one.tsv"
    one.write_text("0\t一个番茄\n", encoding="utf-8")
    for label, table, images in (("first image (1 prompt × 1)", one, 1),
                                 ("demo table (12 prompts × 4)", ROOT / "examples" / "prompts.tsv", 4)):
        cmd = [str(EXE), "--app_name=text2image_artist", "--mode=predict", f"--tables={table}",
               f"--outputs={tmp / 'out.tsv'}", f"--user_defined_parameters=max_generated_num={images}"]
        print(summary(label, [run(cmd, tmp) for _ in range(repeat)]), flush=True)


def busy(tmp: Path, repeat: int, cores: int) -> None:
    (tmp / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "prompts.tsv", tmp / "examples" / "prompts.tsv")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    udp = DEMO[-1]
    settings = {
        "defaults (the README command)": (DEMO, clean),
        "num_threads=1": ([*DEMO[:-1], f"{udp} num_threads=1"], clean),
        f"before: num_threads={available_cores()}, libgomp's wait": (
            [*DEMO[:-1], f"{udp} num_threads={available_cores()}"], {**clean, "GOMP_SPINCOUNT": "300000"}),
    }
    loop = f"import time\nend = time.monotonic() + {BUSY_LIMIT_S}\nwhile time.monotonic() < end:\n    pass\n"
    loaders = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(cores)]
    try:
        time.sleep(2)
        print(f"busy: {cores} busy-loop process(es) started, load average {load_average()}", flush=True)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
        for _ in range(repeat):  # interleaved, so a change of the machine's state hits every setting
            for label, (cmd, env) in settings.items():
                runs[label].append(run(cmd, tmp, env))
        for label, measured in runs.items():
            print(summary(f"busy, {label}", measured), flush=True)
    finally:
        for p in loaders:
            p.kill()
            p.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--busy", type=int, default=1, help="busy-loop processes for the busy part (0: skip it)")
    args = p.parse_args()
    print(f"{cpu_name()}, {available_cores()} core(s), load average {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        quiet(Path(tmp), args.repeat)
        if args.busy:
            busy(Path(tmp), args.repeat, args.busy)
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
