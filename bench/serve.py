"""The server under load: images/s and latency at 1, 4, 8 and 16 concurrent clients, side by side
with the offline pipeline in the same run.

    python bench/serve.py [--quick] [--threads 1] [--requests 4] [--base-requests 1] [--repeats 7] [--loads 5] [--base-repeats 3] [--skip-base | --skip-embedded]

For each model (the embedded ``artist-shapes-tiny-zh``; then the ARTIST-base shape with random
weights, saved to a temporary folder, unless ``--skip-base``) it starts ``easynlp --mode=serve`` as a
real process on loopback (``num_threads`` = ``--threads``), and from this process:

* **direct**: one seeded ``pipe(prompt, generator=...)`` call (the same model, the same threads, the
  server idle), alternating with one request to the idle server from a client made once (its
  connection kept, as a client's is) — medians of ``--repeats`` pairs (goal: the server within 1.1×);
* **offline batch 8**: ``pipe(8 prompts)``, measured before and after each load — the throughput
  the server at 8 clients is compared with (goal ≥ 90 %);
* **clients**: C threads, each sending its requests one after another (``n=1``, a seed each,
  plain HTTP ``POST /v1/images/generations``); images/s over the wall time of the whole load, and
  p50/p95 of the request latencies, and the mean rows per batch step (from ``/metrics``); each
  load ``--loads`` times for the embedded model (once at the ARTIST-base shape), the run of median
  wall time shown. Goal at 8 clients: ≥ 3× the single-client throughput;
* **one step** of 8 rows through the offline sampler's cache and through the server's row cache,
  rows at one position and at their own positions (``step_ms``).

The sampling settings are the checkpoint's own (the server and the pipeline read the same
``generation_config.json``), so a guided image costs two rows in both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # the package itself, before tests/easynlp_artist (a namespace package)
sys.path.append(str(REPO / "tests"))
from common import add_shape_args, build_config, cpu_name, fill_shape_defaults, load_average  # noqa: E402,I001
from helpers.server_process import ServerProcess  # noqa: E402

from easynlp_artist.loading import DEFAULT_MODEL  # noqa: E402
from easynlp_artist.modeling import ArtistModel  # noqa: E402
from easynlp_artist.pipeline import ArtistPipeline  # noqa: E402

PROMPTS = ["一个红色的圆形", "白色背景上的番茄", "蓝色的星形在黑色背景上", "一个海王星", "画一个黄色三角形",
           "一个绿色的正方形", "紫色的葡萄", "一个橙色的篮球"]
CONCURRENCY = (1, 4, 8, 16)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def request(client, url: str, prompt: str, seed: int) -> float:
    start = time.perf_counter()
    r = client.post(url + "/v1/images/generations", json={"prompt": prompt, "n": 1, "seed": seed}, timeout=3600)
    elapsed = time.perf_counter() - start
    if r.status_code != 200 or len(r.json()["data"]) != 1:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return elapsed


def load(url: str, clients: int, per_client: int) -> tuple[float, list[float]]:
    """``clients`` threads, ``per_client`` requests each; (wall seconds, latencies). Each thread makes
    its client before the clock starts (an ``httpx.Client`` builds an SSL context, ~10-20 ms of CPU
    that would otherwise land on the cores the server is measured on)."""
    import httpx

    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def client_thread(c: int) -> None:
        with httpx.Client() as client:
            ready.wait()
            for i in range(per_client):
                k = c * per_client + i
                try:
                    t = request(client, url, PROMPTS[k % len(PROMPTS)], seed=1000 + k)
                except (RuntimeError, httpx.HTTPError) as exc:
                    errors.append(exc)
                    return
                with lock:
                    latencies.append(t)

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, latencies


def step_ms(pipe, rows: int = 8, reps: int = 5, n: int = 20) -> dict[str, float]:
    """One batch step of ``rows`` rows, best of ``reps`` means over ``n`` steps, in ms: the offline
    sampler's cache, the server's row cache with every row at one position, and with each row at
    its own position (as under load, where requests join at different steps)."""
    from easynlp_artist.models.stage2 import decoding
    from easynlp_artist.serve.engine import RowCache

    gpt = pipe.model.gpt
    ids, know = pipe.encode_prompts([PROMPTS[0]] * rows)
    tok = torch.zeros(rows, 1, dtype=torch.long)

    def best(setup, step) -> float:
        times = []
        for _ in range(reps):
            setup()
            start = time.perf_counter()
            for _ in range(n):
                setup()
                step()
            times.append((time.perf_counter() - start) / n * 1e3)
        return min(times)

    out = {}
    with torch.no_grad():
        kv = decoding.new_cache(gpt, rows)
        gpt.prefill(ids, know, kv)
        at = kv.length
        out["offline cache"] = best(lambda: setattr(kv, "length", at), lambda: gpt.step(tok, kv))
        rc = RowCache(gpt, rows)
        rc.window = (0, rows)
        gpt.prefill(ids, know, rc)
        for name, spread in (("row cache, one position", 0), ("row cache, own positions", 1)):
            lengths = [at + spread * i for i in range(rows)]

            def setup(lengths=lengths):
                rc.lengths[:rows] = lengths
                rc.window = (0, rows)

            out[name] = best(setup, lambda: gpt.step(tok, rc))
    return out


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(name: str, source: str, args: argparse.Namespace, per_client: int, repeats: int, loads: int,
                logs: Path) -> None:
    import httpx

    torch.set_num_threads(args.threads)
    pipe = ArtistPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    s = pipe.sampling
    print(f"\n## {name}: {pipe.model.config.gpt.img_len} image tokens per image, guidance_scale={s.guidance_scale:g} "
          f"(rows per image: {2 if s.guidance_scale != 1.0 else 1}), {per_client} request(s) per client; "
          f"server decode_processes={args.decode_processes or 'default'}", flush=True)

    steps = step_ms(pipe)
    print("one step of 8 rows: " + ", ".join(f"{k} {v:.2f} ms" for k, v in steps.items()), flush=True)

    def direct():
        pipe(PROMPTS[0], generator=torch.Generator().manual_seed(1000))

    def batch8():
        pipe(PROMPTS, generator=torch.Generator().manual_seed(1000))

    extra = "" if args.decode_processes is None else f" decode_processes={args.decode_processes}"
    server = ServerProcess(logs, *([f"--checkpoint_dir={source}"] if source != DEFAULT_MODEL else []),
                           f"--user_defined_parameters=num_threads={args.threads} max_batch_rows={args.max_batch_rows}"
                           + extra, env={"OMP_NUM_THREADS": str(args.threads)})
    try:
        server.wait_ready(600)
        direct(), batch8(), load(server.url, 1, 1)  # warm-up: kernel selection, folded weights, page-ins
        # side by side, alternating, so a change in the machine's load hits both; the client (and its
        # connection) made once, as a client would, so only the request is timed
        with httpx.Client() as client:
            pairs = [(seconds(direct), request(client, server.url, PROMPTS[0], seed=1000)) for _ in range(repeats)]
        d, i = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        offline8 = [seconds(batch8)]
        bi, bd = min(p[1] for p in pairs), min(p[0] for p in pairs)
        print(f"idle server, one request: {i:.3f} s against a direct pipeline call {d:.3f} s = {i / d:.2f}x "
              f"(goal <= 1.1x; medians of {repeats} alternating pairs); best of each: {bi:.3f} s against "
              f"{bd:.3f} s = {bi / bd:.2f}x", flush=True)
        rows = []
        for clients in CONCURRENCY:
            runs = []
            for _ in range(loads):  # the run of median wall time is reported
                steps, step_rows = server.metric("artist_steps"), server.metric("artist_step_rows")
                wall, lat = load(server.url, clients, per_client)
                mean_rows = (server.metric("artist_step_rows") - step_rows) / (server.metric("artist_steps") - steps)
                offline8.append(seconds(batch8))  # the offline batch measured between the loads
                runs.append((clients, wall, lat, mean_rows))
            rows.append(sorted(runs, key=lambda r: r[1])[len(runs) // 2])
        b8 = statistics.median(offline8)
        print(f"offline batch of 8: {b8:.2f} s = {8 / b8:.2f} images/s (median of {len(offline8)}, "
              f"one before and one after each load); each load run {loads} time(s), the median one shown")
        print("\n| clients | requests | wall s | images/s | p50 s | p95 s | mean rows per step | x 1 client | "
              "x offline batch 8 |")
        print("|---|---|---|---|---|---|---|---|---|")
        single_rate = None
        for clients, wall, lat, mean_rows in rows:
            rate = len(lat) / wall
            single_rate = single_rate or rate
            print(f"| {clients} | {len(lat)} | {wall:.1f} | {rate:.3f} | {percentile(lat, 0.5):.2f} | "
                  f"{percentile(lat, 0.95):.2f} | {mean_rows:.2f} | {rate / single_rate:.2f} | {rate / (8 / b8):.2f} |")
        print(f"\nmost requests in one batch: {server.metric('artist_batch_requests_peak'):g}, "
              f"most rows in one step: {server.metric('artist_batch_rows_peak'):g}", flush=True)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server and of the pipeline")
    p.add_argument("--requests", type=int, default=4, help="requests per client, embedded model")
    p.add_argument("--base-requests", type=int, default=1, help="requests per client, ARTIST-base shape")
    p.add_argument("--repeats", type=int, default=7, help="alternating direct/server pairs (embedded model)")
    p.add_argument("--base-repeats", type=int, default=3, help="alternating direct/server pairs (ARTIST-base shape)")
    p.add_argument("--loads", type=int, default=5, help="runs of each load (embedded model; the median is shown)")
    p.add_argument("--max-batch-rows", type=int, default=32, help="the server's max_batch_rows")
    p.add_argument("--decode-processes", choices=("true", "false"), default=None,
                   help="the server's decode_processes (default: its own default, child processes on CPU)")
    p.add_argument("--skip-base", action="store_true", help="only the embedded model")
    p.add_argument("--skip-embedded", action="store_true", help="only the ARTIST-base shape")
    args = p.parse_args(argv)
    fill_shape_defaults(args)
    print(f"# bench/serve.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_name()}; "
          f"{os.cpu_count()} cores; threads {args.threads}; load average {load_average()}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        if not args.skip_embedded:
            bench_model("embedded artist-shapes-tiny-zh", DEFAULT_MODEL, args, args.requests, args.repeats, args.loads,
                        logs)
        if not args.skip_base:
            base = ArtistPipeline.from_pretrained(DEFAULT_MODEL)
            torch.manual_seed(0)
            model = ArtistModel(build_config(args))
            shape = "quick" if args.quick else "ARTIST-base"
            folder = ArtistPipeline(model, base.tokenizer).save_pretrained(logs / "base")
            del model, base
            bench_model(f"{shape} shape, random weights", str(folder), args, args.base_requests, args.base_repeats, 1,
                        logs)


if __name__ == "__main__":
    main()
