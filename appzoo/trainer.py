"""A generic training loop for any ``nn.Module`` whose ``forward(batch)`` returns a scalar loss
(or ``(loss, logs)`` with a dict of scalar logs).

Features: AdamW with decay/no-decay parameter groups, linear warmup then linear decay, gradient
accumulation, gradient clipping, mixed precision, DDP when a process group is running, periodic
validation, atomic ``last``/``best`` checkpoints and exact resume (same final parameters as an
uninterrupted run).

Data order: every epoch is a permutation drawn by ``DistributedSampler(shuffle=True,
seed=random_seed)`` with ``set_epoch(epoch)``; with one process the same sampler (one replica) is
used, so N processes with micro batch ``b`` see the same global batches as one process with micro
batch ``N*b`` (when the dataset size is a multiple of N; otherwise the sampler pads by repeating
examples). An epoch that does not fill its last accumulation group ends with a shorter group.

Checkpoint layout (``checkpoint_dir/last`` and, with a validation set, ``checkpoint_dir/best``)::

    <what save_model_fn writes>
    trainer_state.pt              optimizer, scheduler, scaler, step, epoch, position, RNG states
    training_model.safetensors    the exact training weights, unless a load_model_fn is given

A checkpoint is written into a temporary directory inside ``checkpoint_dir`` and renamed into
place, so a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from appzoo.args import TrainingArguments
from appzoo.distributed import (
    all_reduce_max,
    all_reduce_sum,
    barrier,
    device_for_rank,
    get_rank,
    get_world_size,
    my_shard,
)
from appzoo.errors import RunError
from modelzoo.files import fsync_path, publish_dir, recover_dir, temp_sibling

logger = logging.getLogger("appzoo.trainer")

STATE_FILE = "trainer_state.pt"
MODEL_FILE = "training_model.safetensors"
STATE_FORMAT = 1
DEFAULT_CHECKPOINT_DIR = "./checkpoint"

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)


class TrainingError(RunError):
    """Training cannot go on (the CLI exits with status 1)."""


class NonFiniteLossError(TrainingError):
    """The loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainerConfig(TrainingArguments):
    """The training flags (:class:`appzoo.args.TrainingArguments`) plus settings without a flag."""

    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    num_workers: int = 0
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoint_dir is None:
            self.checkpoint_dir = DEFAULT_CHECKPOINT_DIR
        if "://" in str(self.checkpoint_dir) and not str(self.checkpoint_dir).startswith("file://"):
            raise ValueError(f"checkpoint_dir must be a local directory, got {self.checkpoint_dir!r}")

    @classmethod
    def from_args(cls, args: TrainingArguments, **overrides: Any) -> TrainerConfig:
        """The trainer settings of the command-line flags (``overrides`` win)."""
        return cls(**{**args.training_arguments(), **overrides})


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_valid_loss: float | None = None


# ------------------------------------------------------------------------------------------ utilities


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for biases, norm weights, embeddings, parameters with ndim < 2 and
    names listed by an optional ``model.no_weight_decay()``; decay for the rest. Frozen parameters
    are left out."""
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag, *_NORM_TYPES)):
            prefix = f"{module_name}." if module_name else ""
            exempt.update(prefix + name for name, _ in module.named_parameters(recurse=False))
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name in exempt or name in listed or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier for the ``s``-th update (0-based): (s+1)/warmup during warmup, then linear decay
    from 1 to 1/(total-warmup) at the last update — never 0 for an update that happens."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside dicts, lists, tuples and dataclasses → ``device``; objects with ``.to`` too."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to_device(value, device) for value in batch)
    if isinstance(batch, tuple):
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {f.name: move_to_device(getattr(batch, f.name), device)
                   for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **changes)
    if hasattr(batch, "to") and callable(batch.to):
        return batch.to(device)
    return batch


def _unpack(output: Any) -> tuple[torch.Tensor, dict[str, float]]:
    loss, logs = (output if isinstance(output, tuple) else (output, {}))
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("model.forward(batch) must return a scalar loss tensor or (loss, logs)")
    return loss.reshape(()), {key: float(value) for key, value in (logs or {}).items()}


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def recover_checkpoint_dir(root: Path) -> None:
    """Repair ``last``/``best`` swaps interrupted between their renames; drop staging folders of
    killed writers (those of running processes are kept)."""
    for name in ("last", "best"):
        recover_dir(root / name)


def check_checkpoint_dir(config: TrainingArguments) -> None:
    """A new run must not silently mix with an earlier one in the same folder (predict would
    then load the old ``best/``): resume it or overwrite it explicitly."""
    if config.resume_from_checkpoint or config.overwrite_output_dir:
        return
    root = Path(str(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR).removeprefix("file://"))
    held = [f"{name}/" for name in ("last", "best") if (root / name).exists()]
    if held:
        raise ValueError(
            f"--checkpoint_dir={root} already holds a training run ({', '.join(held)}); pass "
            f"--resume_from_checkpoint={root} to continue it or --overwrite_output_dir to start again"
        )


def resume_dir(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a checkpoint_dir holding ``last``, that contains trainer state."""
    root = Path(path)
    for candidate in (root, root / "last"):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"resume_from_checkpoint: no {STATE_FILE} in {root} or {root / 'last'}")


@torch.no_grad()
def evaluate_loss(model: nn.Module, dataset, collate_fn: Callable[[list], Any], *, batch_size: int,
                  device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None,
                  num_workers: int = 0) -> dict:
    """Mean loss and logs per example of ``model`` over ``dataset`` (model in eval mode, no gradients).

    With a process group running, example ``i`` is evaluated by rank ``i % world`` and the sums are
    all-reduced, so every process returns the same numbers. Does not touch the global RNGs.
    """
    device = torch.device(device) if device is not None else device_for_rank()
    was_training = model.training
    model.eval()
    indices = my_shard(len(dataset))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    autocast = (contextlib.nullcontext() if amp_dtype is None
                else torch.autocast(device_type=device.type, dtype=amp_dtype))
    keys: list[str] = []
    sums = {"loss": 0.0}
    count = 0
    try:
        for chunk, batch in zip(batches, loader):
            with autocast:
                loss, logs = _unpack(model(move_to_device(batch, device)))
            sums["loss"] += float(loss) * len(chunk)
            for key, value in logs.items():
                if key not in sums:
                    keys.append(key)
                    sums[key] = 0.0
                sums[key] += value * len(chunk)
            count += len(chunk)
    finally:
        model.train(was_training)
    names = ["loss", *keys]
    totals = all_reduce_sum([sums[name] for name in names] + [float(count)])
    total_count = int(totals[-1])
    if total_count == 0:
        raise ValueError("the evaluation set is empty")
    return {**{name: totals[i] / total_count for i, name in enumerate(names)}, "num_samples": total_count}


# -------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Train ``model`` on ``train_dataset`` (map-style: ``len`` and ``[i]``).

    ``collate_fn(list_of_examples) -> batch``; ``model(batch)`` returns the loss.
    ``save_model_fn(model, directory)`` writes the app's checkpoint files (rank 0 only);
    ``load_model_fn(model, directory)`` reads them back on resume — without it the trainer keeps
    its own exact copy of the weights (``training_model.safetensors``).
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset,
        collate_fn: Callable[[list], Any],
        config: TrainerConfig,
        *,
        valid_dataset=None,
        save_model_fn: Callable[[nn.Module, Path], None],
        load_model_fn: Callable[[nn.Module, Path], None] | None = None,
        param_groups_fn: Callable[[nn.Module], list[dict]] | None = None,
        device: torch.device | str | None = None,
    ):
        for name, dataset in (("train_dataset", train_dataset), ("valid_dataset", valid_dataset)):
            if dataset is not None and not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
                raise TypeError(f"{name} must be map-style (support len() and indexing)")
        if valid_dataset is not None and len(valid_dataset) == 0:
            raise ValueError("the validation set is empty")
        check_checkpoint_dir(config)
        self.config = config
        self.device = torch.device(device) if device is not None else device_for_rank()
        self.rank, self.world_size = get_rank(), get_world_size()
        self.model = model.to(self.device)
        self.train_dataset = train_dataset
        self.valid_dataset = valid_dataset
        self.collate_fn = collate_fn
        self.save_model_fn = save_model_fn
        self.load_model_fn = load_model_fn
        self.checkpoint_dir = Path(str(config.checkpoint_dir).removeprefix("file://"))
        self.log_history: list[dict] = []

        self.sampler = DistributedSampler(train_dataset, num_replicas=self.world_size, rank=self.rank,
                                          shuffle=True, seed=config.random_seed)
        self.batches_per_epoch = math.ceil(len(self.sampler) / config.micro_batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError("the training set is empty")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation_steps)
        self.total_steps = max(1, math.ceil(config.epoch_num * self.steps_per_epoch))
        self.warmup_steps = math.ceil(config.warmup_proportion * self.total_steps)

        groups = (param_groups_fn or (lambda m: default_param_groups(m, config.weight_decay)))(self.model)
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.adam_betas,
                                           eps=config.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear_decay(self.warmup_steps, self.total_steps)
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model: nn.Module = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=config.find_unused_parameters
            )
        else:
            self.ddp_model = self.model
        self.state = TrainState()
        self.last_lr = config.learning_rate

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.config.use_amp:
            return None
        if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------- batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's micro batches (dataset indices) of ``epoch``, in order."""
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)
        size = self.config.micro_batch_size
        return [indices[i:i + size] for i in range(0, len(indices), size)]

    def _loader(self, batches: Sequence[Sequence[int]], dataset, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.random_seed + epoch)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=self.collate_fn,
                          num_workers=self.config.num_workers, generator=generator,
                          pin_memory=self.device.type == "cuda")

    # ---------------------------------------------------------------------------------------- train

    def train(self) -> dict:
        """Run to ``epoch_num`` epochs; returns final metrics and checkpoint paths."""
        cfg = self.config
        resume = Path(str(cfg.resume_from_checkpoint).removeprefix("file://")) if cfg.resume_from_checkpoint else None
        if self.rank == 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            recover_checkpoint_dir(self.checkpoint_dir)
            if resume is not None:
                for root in (resume, resume.parent):
                    recover_checkpoint_dir(root)
            elif cfg.overwrite_output_dir:
                for name in ("last", "best"):
                    shutil.rmtree(self.checkpoint_dir / name, ignore_errors=True)
        barrier()
        if resume is not None:
            self._resume(resume_dir(resume))
        else:
            seed_everything(cfg.random_seed + self.rank)
        if self.rank == 0:
            logger.info(
                "training: %d examples, %d process(es), %d optimizer steps (%d per epoch), warmup %d, "
                "starting at step %d", len(self.train_dataset), self.world_size, self.total_steps,
                self.steps_per_epoch, self.warmup_steps, self.state.step,
            )
        self.model.train()
        progress = self._progress_bar()
        interval = {"loss": 0.0, "steps": 0, "samples": 0, "start": time.perf_counter()}
        last_metrics: dict = {}
        last_loss = float("nan")
        while self.state.step < self.total_steps:
            epoch = self.state.epoch
            batches = self.epoch_batches(epoch)
            start = self.state.batch_in_epoch
            iterator = iter(self._loader(batches[start:], self.train_dataset, epoch))
            accum = cfg.gradient_accumulation_steps
            for group_start in range(start, len(batches), accum):
                group = batches[group_start:group_start + accum]
                last_loss, logs, samples = self._optimizer_step(iterator, group)
                self.state.step += 1
                self.state.batch_in_epoch = group_start + len(group)
                if self.state.batch_in_epoch >= len(batches):
                    self.state.epoch, self.state.batch_in_epoch = epoch + 1, 0
                interval["loss"] += last_loss
                interval["steps"] += 1
                interval["samples"] += samples
                if progress is not None:
                    progress.update(1)
                if self.state.step % cfg.logging_steps == 0 or self.state.step == self.total_steps:
                    self._log(interval, logs)
                    interval = {"loss": 0.0, "steps": 0, "samples": 0, "start": time.perf_counter()}
                due = cfg.save_checkpoint_steps is not None and self.state.step % cfg.save_checkpoint_steps == 0
                if due or self.state.step == self.total_steps:
                    last_metrics = self._checkpoint()
                if self.state.step >= self.total_steps:
                    break
        if progress is not None:
            progress.close()
        return {
            "global_step": self.state.step,
            "epoch": self.state.epoch,
            "train_loss": last_loss,
            "valid_loss": last_metrics.get("loss"),
            "best_valid_loss": self.state.best_valid_loss,
            "last_checkpoint": str(self.checkpoint_dir / "last"),
            "best_checkpoint": str(self.checkpoint_dir / "best") if self.state.best_valid_loss is not None else None,
        }

    def _optimizer_step(self, iterator, group: list[list[int]]) -> tuple[float, dict, int]:
        cfg = self.config
        loss_sum = 0.0
        log_sums: dict[str, float] = {}
        samples = 0
        for position in range(len(group)):
            batch = move_to_device(next(iterator), self.device)
            last = position == len(group) - 1
            sync = contextlib.nullcontext() if last or self.world_size == 1 else self.ddp_model.no_sync()
            with sync:
                with self._autocast():
                    loss, logs = _unpack(self.ddp_model(batch))
                self.scaler.scale(loss.float() / len(group)).backward()
            loss_sum += float(loss.detach())
            for key, value in logs.items():
                log_sums[key] = log_sums.get(key, 0.0) + value
            samples += len(group[position])
        keys = sorted(log_sums)
        reduced = all_reduce_sum([loss_sum / len(group), float(samples), *(log_sums[k] / len(group) for k in keys)])
        global_loss, global_samples = reduced[0] / self.world_size, int(reduced[1])
        logs = {key: reduced[2 + i] / self.world_size for i, key in enumerate(keys)}
        step = self.state.step + 1
        if not math.isfinite(global_loss):
            self._non_finite(f"loss is {global_loss}", step)
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if not math.isfinite(norm) and not self.scaler.is_enabled():
                self._non_finite(f"gradient norm is {norm}", step)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return global_loss, logs, global_samples

    def _non_finite(self, what: str, step: int) -> None:
        last = self.checkpoint_dir / "last"
        kept = f"last good checkpoint kept at {last}" if (last / STATE_FILE).is_file() else "no checkpoint written yet"
        raise NonFiniteLossError(
            f"non-finite training {what} at optimizer step {step} (epoch {self.state.epoch}); "
            f"training stopped, {kept}"
        )

    def _progress_bar(self):
        if self.rank != 0 or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True)

    def _log(self, interval: dict, logs: dict) -> None:
        elapsed = max(time.perf_counter() - interval["start"], 1e-9)
        entry = {
            "step": self.state.step,
            "epoch": self.state.epoch + self.state.batch_in_epoch / max(1, self.batches_per_epoch),
            "loss": interval["loss"] / max(1, interval["steps"]),
            "lr": self.last_lr,
            "samples_per_s": interval["samples"] / elapsed,
            **logs,
        }
        self.log_history.append(entry)
        if self.rank == 0:
            extra = "".join(f" {k} {v:.4g}" for k, v in logs.items())
            logger.info("step %d/%d epoch %.2f loss %.4f lr %.3e samples/s %.1f%s", entry["step"],
                        self.total_steps, entry["epoch"], entry["loss"], entry["lr"], entry["samples_per_s"], extra)

    # ------------------------------------------------------------------------------------- evaluate

    def evaluate(self, dataset) -> dict:
        """Mean loss (and logs) per example over ``dataset``, split across processes."""
        return evaluate_loss(self.model, dataset, self.collate_fn, batch_size=self.config.micro_batch_size,
                             device=self.device, amp_dtype=self.amp_dtype, num_workers=self.config.num_workers)

    # ---------------------------------------------------------------------------------- checkpoints

    def _checkpoint(self) -> dict:
        metrics = self.evaluate(self.valid_dataset) if self.valid_dataset is not None else {}
        valid_loss = metrics.get("loss")
        if valid_loss is not None and self.rank == 0:
            logger.info("step %d valid loss %.4f", self.state.step, valid_loss)
        is_best = valid_loss is not None and (
            self.state.best_valid_loss is None or valid_loss < self.state.best_valid_loss
        )
        if is_best:
            self.state.best_valid_loss = valid_loss
        rng_states = self._gather_rng_states()
        error: Exception | None = None
        if self.rank == 0:
            try:
                self._write_checkpoint(rng_states, is_best)
            except Exception as exc:  # reported to every process below, then re-raised
                error = exc
        if all_reduce_max(1.0 if error is not None else 0.0):
            if error is not None:
                raise error
            raise TrainingError("writing the checkpoint failed in process 0")
        return metrics

    def _gather_rng_states(self) -> list[dict]:
        state = _rng_state()
        if self.world_size == 1:
            return [state]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def state_dict(self, rng_states: list[dict]) -> dict:
        return {
            "format": STATE_FORMAT,
            "step": self.state.step,
            "epoch": self.state.epoch,
            "batch_in_epoch": self.state.batch_in_epoch,
            "best_valid_loss": self.state.best_valid_loss,
            "total_steps": self.total_steps,
            "world_size": self.world_size,
            "micro_batch_size": self.config.micro_batch_size,
            "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
            "num_train_examples": len(self.train_dataset),
            "random_seed": self.config.random_seed,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states,
        }

    def _write_checkpoint(self, rng_states: list[dict], is_best: bool) -> None:
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        temp = temp_sibling(root / "last", "staging")
        temp.mkdir()
        temp_best: Path | None = None
        try:
            self.save_model_fn(self.model, temp)
            torch.save(self.state_dict(rng_states), temp / STATE_FILE)
            if self.load_model_fn is None:
                from safetensors.torch import save_model

                save_model(self.model, str(temp / MODEL_FILE))
            fsync_path(temp)
            if is_best:
                temp_best = temp_sibling(root / "best", "staging")
                shutil.copytree(temp, temp_best)
                fsync_path(temp_best)
            publish_dir(temp, root / "last")
            if temp_best is not None:
                publish_dir(temp_best, root / "best")
        finally:
            for leftover in (temp, temp_best):
                if leftover is not None and leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
        logger.info("step %d: checkpoint written to %s%s", self.state.step, root / "last",
                    " (new best)" if is_best else "")

    def _resume(self, path: Path) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path / STATE_FILE}: unsupported trainer state format {state.get('format')!r}")
        expected = {
            "world_size": self.world_size,
            "micro_batch_size": self.config.micro_batch_size,
            "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
            "num_train_examples": len(self.train_dataset),
        }
        for key, value in expected.items():
            if state[key] != value:
                raise ValueError(
                    f"cannot resume from {path}: it was written with {key}={state[key]}, this run has {value}"
                )
        if self.load_model_fn is not None:
            self.load_model_fn(self.model, path)
        else:
            from safetensors.torch import load_model

            load_model(self.model, str(path / MODEL_FILE), strict=True, device=str(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(state["step"], state["epoch"], state["batch_in_epoch"], state["best_valid_loss"])
        _set_rng_state(state["rng"][self.rank])
        if self.rank == 0:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step,
                        self.state.epoch, self.state.batch_in_epoch)
