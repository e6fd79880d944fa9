"""Run under torchrun: sharded predict where one rank fails; each rank records what it raised."""

from __future__ import annotations

import sys
from pathlib import Path

from appzoo.distributed import cleanup_distributed, get_rank, init_distributed, run_sharded_predict
from appzoo.tables import Schema, read_table


def main(table: str, output: str, fail_on: str, report_dir: str) -> None:
    init_distributed()

    def predict(rows):
        if any(row["text"] == fail_on for row in rows):
            raise ValueError(f"cannot handle {fail_on}")
        return [[row["text"].upper()] for row in rows]

    try:
        outcome = f"ok {run_sharded_predict(read_table(table, Schema.parse('text:str:1')), predict, output, 2)}"
    except Exception as exc:  # the probe reports every outcome
        outcome = f"{type(exc).__name__}: {exc}"
    Path(report_dir, f"rank{get_rank()}.txt").write_text(outcome)
    cleanup_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
