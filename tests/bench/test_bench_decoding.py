"""Smoke test of ``bench/generation.py --section decoding`` at a tiny shape: every result line is
printed (dtypes and int8 next to their floors, sampling against the Hugging Face peer, Jacobi
acceptance on the embedded model and the derived speed-up). No timing is asserted."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--section", "decoding", "--quick", "--threads", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
        "--text-len", "4", "--resolution", "16", "--vq-ch", "8", "--vq-ch-mult", "1", "2", "--vq-embed-dim", "8",
        "--codes", "32", "--stream-mib", "16", "--embedded-images", "1", "--reps", "2", "--jacobi-window", "4"]


def test_decoding_section_prints_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "generation.py"), *ARGS], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for start in ("machine:", "isa:", "streaming bandwidth:", "embedded model, Jacobi window 4",
                  "jacobi sampling bf16 batch 1, random weights:"):
        assert any(line.startswith(start) for line in lines), (start, proc.stdout)
    for label in ("fp32", "bf16", "int8"):
        for rows in (1, 8):
            step = [line for line in lines if line.startswith(f"decode step {label} batch {rows}:")]
            assert len(step) == 1 and "x floor" in step[0], (label, rows, proc.stdout)
            assert any(line.startswith(f"sampling {label} batch {rows}:") for line in lines), (label, rows)
        assert any(line.startswith(f"jacobi speed-up {label} batch 1") for line in lines), label
    hf = [line for line in lines if "HF GPT2LMHeadModel.generate" in line]
    assert len(hf) == 4  # fp32 and bf16 at batch 1 and 8
    band = next(line for line in lines if line.startswith("embedded model"))
    assert "rows 0-1:" in band and "rows 6-7:" in band
