"""ModelZoo benchmark: download throughput and cached-resolve latency.

1. Throughput: one object served by the loopback Range HTTP server (``tests/helpers/range_server.py``,
   run in its own process) is fetched alternately by
   - a plain streamed copy (``requests`` stream, 1 MiB reads, written to a file), and
   - ``modelzoo.resolve`` of a registered name with sha256 and size into a fresh cache (lock, hash
     while streaming, fsync, verify, atomic install, metadata).
   Goal: ModelZoo ≥ 0.8× the plain copy.
2. Latency of resolving an already cached name: in a warm process (median and p95 over many calls)
   and the first call in a fresh process (after ``import modelzoo``). Goal ≤ 20 ms.

Usage: ``python bench/downloads.py [--size-mib 128] [--repeats 3] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANGE_SERVER = REPO / "tests" / "helpers" / "range_server.py"  # test-only code, not in the package
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))

from helpers.range_server import write_random  # noqa: E402

import modelzoo  # noqa: E402

CHUNK = 1024 * 1024


def plain_copy(url: str, dest: Path, with_sha256: bool = False) -> float:
    """Stream ``url`` to ``dest`` in 1 MiB reads; optionally hash in the same loop (a reference point)."""
    import requests

    h = hashlib.sha256()
    start = time.perf_counter()
    with requests.get(url, stream=True, headers={"Accept-Encoding": "identity"}, timeout=60) as resp:
        resp.raise_for_status()
        with open(dest, "wb") as f:
            while True:
                chunk = resp.raw.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                if with_sha256:
                    h.update(chunk)
    return time.perf_counter() - start


def zoo_download(name: str, cache: Path) -> float:
    start = time.perf_counter()
    modelzoo.resolve(name, cache_dir=cache)
    return time.perf_counter() - start


def throughput(work: Path, srv_root: Path, size: int, digest: str, repeats: int,
               rate_mib: float | None) -> dict[str, list[float]]:
    """Seconds per run for each method, alternating methods within each repeat."""
    cmd = [sys.executable, str(RANGE_SERVER), str(srv_root)]
    if rate_mib:
        cmd += ["--rate-mib", str(rate_mib)]
    server = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/model.safetensors"
        index = work / "index.json"
        index.write_text(json.dumps({"models": {"bench/model": {"files": [
            {"path": "model.safetensors", "uri": url, "sha256": digest, "size": size}]}}}))
        os.environ["EASYNLP_MODELZOO_INDEX"] = str(index)
        runs: dict[str, list[float]] = {"plain": [], "plain+sha256": [], "modelzoo": []}
        plain_copy(url, work / "warmup.bin")
        for _ in range(repeats):
            runs["plain"].append(plain_copy(url, work / "plain.bin"))
            runs["plain+sha256"].append(plain_copy(url, work / "plain.bin", with_sha256=True))
            cache = work / "cache-throughput"
            shutil.rmtree(cache, ignore_errors=True)
            runs["modelzoo"].append(zoo_download("bench/model", cache))
        return runs
    finally:
        server.stdin.close()
        server.wait(timeout=10)


def report(title: str, runs: dict[str, list[float]], mib: float) -> None:
    print(title)
    base = mib / statistics.median(runs["plain"])
    for method, seconds in runs.items():
        rate = mib / statistics.median(seconds)
        print(f"  {method:13s}: {rate:7.1f} MiB/s  x{rate / base:.2f}  (runs: "
              f"{', '.join(f'{t:.2f}s' for t in seconds)})")


_COLD = ("import time, sys; t0 = time.perf_counter(); import modelzoo; t1 = time.perf_counter(); "
         "modelzoo.resolve(sys.argv[1], cache_dir=sys.argv[2]); t2 = time.perf_counter(); "
         "print((t1 - t0) * 1e3, (t2 - t1) * 1e3)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--link-mib", type=float, default=100.0,
                        help="also measure with the server capped at this rate (0: skip)")
    parser.add_argument("--latency-calls", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-modelzoo-", dir=args.workdir))
    os.environ["EASYNLP_MODELZOO_PROGRESS"] = "0"
    try:
        srv_root = work / "srv"
        blob = write_random(srv_root / "model.safetensors", args.size_mib * CHUNK)
        size = blob.stat().st_size
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        mib = size / CHUNK
        print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"object: {mib:.0f} MiB, loopback HTTP server in its own process, median of {args.repeats}")
        report("unthrottled loopback:", throughput(work, srv_root, size, digest, args.repeats, None), mib)
        if args.link_mib:
            report(f"server capped at {args.link_mib:.0f} MiB/s:",
                   throughput(work, srv_root, size, digest, args.repeats, args.link_mib), mib)

        cache = work / "cache-throughput"
        times = []
        for _ in range(args.latency_calls):
            t0 = time.perf_counter()
            modelzoo.resolve("bench/model", cache_dir=cache)
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        cold = [subprocess.run([sys.executable, "-c", _COLD, "bench/model", str(cache)], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout.split() for _ in range(5)]
        cold_import = statistics.median(float(c[0]) for c in cold)
        cold_resolve = statistics.median(float(c[1]) for c in cold)
        p95 = times[int(0.95 * (len(times) - 1))]
        print(f"cached resolve, warm process: median {statistics.median(times):.3f} ms, p95 {p95:.3f} ms "
              f"over {len(times)} calls (goal <= 20 ms)")
        print(f"cached resolve, fresh process: first call {cold_resolve:.2f} ms "
              f"(+ import modelzoo {cold_import:.1f} ms), median of 5 processes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
