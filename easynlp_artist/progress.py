"""Progress of a long run over a known number of rows (predict, FID generation, reconstruction).

On a terminal: a tqdm bar (rows, images, images/s, ETA), as training shows. Otherwise (a log file,
a notebook cell capturing stderr, a scheduler): one log line every ``EASYNLP_PROGRESS_SECONDS``
seconds (30 by default) and one at the end: rows done / total, images, images/s, ETA.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from modelzoo.files import env_number

PROGRESS_SECONDS_ENV = "EASYNLP_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def sampling_text(sampling) -> str:
    """A SamplingConfig as ``top_k=…, top_p=…, …`` (every field)."""
    return ", ".join(f"{k}={v}" for k, v in sampling.to_dict().items())


def run_settings(pipe, sampling) -> str:
    """Where and how the pipeline computes: device, dtype, torch threads, and the effective sampling
    settings (the checkpoint's generation_config.json under the keys given)."""
    return (f"device {pipe.device}, dtype {str(pipe.dtype).removeprefix('torch.')}, "
            f"{torch.get_num_threads()} thread(s); sampling: {sampling_text(sampling)}")


class Progress:
    """``update(rows, images)`` after each batch; ``close()`` (or ``with``) at the end.

    ``terminal`` (default: whether stderr is one) chooses the bar; ``clock`` is for tests."""

    def __init__(self, total: int, desc: str, logger: logging.Logger, *, terminal: bool | None = None,
                 every: float | None = None, clock=time.monotonic) -> None:
        self.total, self.desc, self.logger, self.clock = total, desc, logger, clock
        self.every = env_number(PROGRESS_SECONDS_ENV, DEFAULT_SECONDS, float, minimum=0.0) if every is None else every
        self.rows = self.images = 0
        self.start = self.last = clock()
        self.bar = None
        if sys.stderr.isatty() if terminal is None else terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close(done=exc[0] is None)

    def rate(self) -> float:
        elapsed = self.clock() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        elapsed = self.clock() - self.start
        text = f"{self.desc}: {self.rows}/{self.total} rows, {self.images} images, {self.rate():.2f} images/s"
        if 0 < self.rows < self.total and elapsed > 0:
            text += f", ETA {(self.total - self.rows) * elapsed / self.rows:.0f} s"
        return text + f", {elapsed:.1f} s"

    def update(self, rows: int, images: int) -> None:
        self.rows += rows
        self.images += images
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.images} images, {self.rate():.2f} images/s", refresh=False)
            self.bar.update(rows)
        elif self.clock() - self.last >= self.every and self.rows < self.total:
            self.last = self.clock()
            self.logger.info("%s", self.line())

    def close(self, done: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if done:
            self.logger.info("%s", self.line())
