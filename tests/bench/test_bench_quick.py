"""Smoke test of the benchmark scripts: both run end to end at a tiny shape and print their results.

They run in one subprocess (one interpreter start-up and torch import for both). No timing is
asserted: the figures only mean something at the scripts' real shapes.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--quick", "--threads", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--text-len", "4",
        "--resolution", "16", "--vq-ch", "8", "--vq-ch-mult", "1", "2", "--vq-embed-dim", "8",
        "--codes", "32"]
GENERATION = [*TINY, "--batches", "1", "2", "--decode-batch", "2", "--window", "2", "--windows", "2",
              "--full-batch1", "--probe-every", "16", "--matmul-size", "256"]
TRAIN = [*TINY, "--batch", "2", "--steps", "2"]

RUNNER = """
import runpy, sys
for script, args in ((sys.argv[1], sys.argv[2].split()), (sys.argv[3], sys.argv[4].split())):
    sys.argv = [script, *args]
    print("=== " + script, flush=True)
    runpy.run_path(script, run_name="__main__")
"""


def test_both_benchmarks_print_their_result_lines():
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(ROOT / "bench" / "generation.py"), " ".join(GENERATION),
         str(ROOT / "bench" / "train.py"), " ".join(TRAIN)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    generation, train = proc.stdout.split("=== " + str(ROOT / "bench" / "train.py"))
    for start in ("machine:", "fp32 matmul 256x256:", "batch 1: cached", "batch 2: cached",
                  "batch 2 guided", "full-recompute check, batch 1:", "GPT cached decode batch 2:"):
        assert any(line.startswith(start) for line in generation.splitlines()), (start, generation)
    assert "ratio" in generation and "peak RSS" in generation and "% of measured matmul" in generation
    for label in ("vs full recompute as released", "vs full recompute, head on the last position only"):
        assert sum(line.strip().startswith(label) for line in generation.splitlines()) == 2, (label, generation)
    for start in ("machine:", "code cache:", "cached codes:", "encode each batch:", "ratio "):
        assert any(line.startswith(start) for line in train.splitlines()), (start, train)


def test_released_forward_samples_the_same_distribution():
    """The benchmark's as-released full recompute computes logits at every position but must give the
    library's next-token logits."""
    import runpy

    import torch

    from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig

    bench = runpy.run_path(str(ROOT / "bench" / "generation.py"))
    torch.manual_seed(0)
    gpt = ArtistGPT(GPTConfig(img_vocab_size=24, text_vocab_size=30, text_len=4, img_len=9, n_layer=2,
                              n_head=2, n_embd=16)).eval()
    text = torch.randint(1, 30, (3, 4))
    prefix = torch.randint(0, 24, (3, 5))
    view = bench["window_view"](gpt, 7, released=True)
    assert view.config.img_len == 7 and gpt.config.img_len == 9 and view.head is gpt.head
    with torch.no_grad():
        torch.testing.assert_close(view.prefill(text, None, None, prefix), gpt.prefill(text, None, None, prefix))
