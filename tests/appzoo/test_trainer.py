from __future__ import annotations

import copy
import math
import subprocess

import pytest
import torch
from torch import nn

from appzoo.trainer import (
    STATE_FILE,
    NonFiniteLossError,
    Trainer,
    TrainerConfig,
    default_param_groups,
    evaluate_loss,
    seed_everything,
)


def _examples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g) * 2 - 1
    y = x.sum(-1) * 0.5 - 0.3 * x[:, 0] * x[:, 1]
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def _save(model: nn.Module, directory) -> None:
    torch.save(model.state_dict(), directory / "pytorch_model.bin")


def _config(tmp_path, **overrides) -> TrainerConfig:
    values = dict(checkpoint_dir=str(tmp_path / "ckpt"), micro_batch_size=2, epoch_num=1.5, learning_rate=0.05,
                  weight_decay=0.1, max_grad_norm=0.05, warmup_proportion=0.2, gradient_accumulation_steps=2,
                  logging_steps=1, random_seed=7)
    values.update(overrides)
    return TrainerConfig(**values)


def _manual_reference(model: nn.Module, data: list[dict], collate, cfg: TrainerConfig, decay_names: set[str]):
    """Independent re-implementation of the documented training schedule."""
    n, micro, accum = len(data), cfg.micro_batch_size, cfg.gradient_accumulation_steps
    batches_per_epoch = math.ceil(n / micro)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total = math.ceil(cfg.epoch_num * steps_per_epoch)
    warmup = math.ceil(cfg.warmup_proportion * total)
    named = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [named[k] for k in named if k in decay_names], "weight_decay": cfg.weight_decay},
         {"params": [named[k] for k in named if k not in decay_names], "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    lrs, step, epoch = [], 0, 0
    while step < total:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.random_seed + epoch)).tolist()
        batches = [perm[i:i + micro] for i in range(0, n, micro)]
        for g in range(0, len(batches), accum):
            if step == total:
                break
            factor = (step + 1) / warmup if step < warmup else (total - step) / (total - warmup)
            for group in optimizer.param_groups:
                group["lr"] = cfg.learning_rate * factor
            lrs.append(cfg.learning_rate * factor)
            optimizer.zero_grad()
            group_batches = batches[g:g + accum]
            for chunk in group_batches:
                loss, _ = model(collate([data[i] for i in chunk]))
                (loss / len(group_batches)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            step += 1
        epoch += 1
    return lrs


def test_training_matches_independent_loop(toy_plugin, tmp_path):
    data = _examples(10)
    model = toy_plugin.build_model(toy_plugin.ToyParams(hidden=6), seed=3)
    reference = copy.deepcopy(model)
    cfg = _config(tmp_path)
    trainer = Trainer(model, data, toy_plugin.collate, cfg, save_model_fn=_save)
    result = trainer.train()
    lrs = _manual_reference(reference, data, toy_plugin.collate, cfg, {"net.0.weight", "net.3.weight"})
    assert trainer.total_steps == len(lrs) == 5 and result["global_step"] == 5
    assert [entry["lr"] for entry in trainer.log_history] == pytest.approx(lrs)
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, msg=name)
    saved = torch.load(tmp_path / "ckpt" / "last" / "pytorch_model.bin", weights_only=True)
    torch.testing.assert_close(saved["net.0.weight"], model.net[0].weight)


def test_param_groups_exempt_bias_norm_embedding_and_listed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.pos = nn.Parameter(torch.zeros(1, 3, 4))
            self.scale = nn.Parameter(torch.ones(2, 2))
            self.ln = nn.LayerNorm(4)
            self.proj = nn.Linear(4, 4)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

        def no_weight_decay(self):
            return ["pos"]

    net = Net()
    groups = default_param_groups(net, 0.3)
    names = {id(p): n for n, p in net.named_parameters()}
    by_decay = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert by_decay == {0.3: ["proj.weight", "scale"], 0.0: ["emb.weight", "ln.bias", "ln.weight", "pos", "proj.bias"]}


def test_checkpoints_last_best_and_state_loadable_weights_only(toy_plugin, tmp_path):
    model = toy_plugin.build_model(toy_plugin.ToyParams(), seed=0)
    valid = _examples(5, seed=1)
    cfg = _config(tmp_path, epoch_num=2, save_checkpoint_steps=2, learning_rate=0.02)
    trainer = Trainer(model, _examples(8), toy_plugin.collate, cfg, valid_dataset=valid, save_model_fn=_save)
    result = trainer.train()
    root = tmp_path / "ckpt"
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]
    state = torch.load(root / "last" / STATE_FILE, weights_only=True)
    assert state["step"] == result["global_step"] == 4
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    assert sorted(p.name for p in (root / "last").iterdir()) == [
        "pytorch_model.bin", "trainer_state.pt", "training_model.safetensors"]
    expected = evaluate_loss(model, valid, toy_plugin.collate, batch_size=3)
    with torch.no_grad():
        independent = sum(float(model(toy_plugin.collate([e]))[0]) for e in valid) / len(valid)
    assert expected["loss"] == pytest.approx(independent, rel=1e-5)
    assert result["valid_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    best = torch.load(root / "best" / STATE_FILE, weights_only=True)
    assert best["best_valid_loss"] == pytest.approx(result["best_valid_loss"])


def test_resume_in_process_matches_uninterrupted(toy_plugin, tmp_path):
    params = toy_plugin.ToyParams(dropout=0.3)
    full = toy_plugin.build_model(params, seed=5)
    first = copy.deepcopy(full)
    second = copy.deepcopy(full)
    data = _examples(12)
    Trainer(full, data, toy_plugin.collate, _config(tmp_path / "a", epoch_num=2), save_model_fn=_save).train()
    half = _config(tmp_path / "b", epoch_num=2, save_checkpoint_steps=2)
    Trainer(first, data, toy_plugin.collate, half, save_model_fn=_save).train()
    state = torch.load(tmp_path / "b" / "ckpt" / "last" / STATE_FILE, weights_only=True)
    assert state["step"] == 6
    # resume from the checkpoint of step 2 (mid-epoch) written by a run stopped early
    early = _config(tmp_path / "c", epoch_num=2, save_checkpoint_steps=2)
    partial = Trainer(copy.deepcopy(second), data, toy_plugin.collate, early, save_model_fn=_save)
    partial.total_steps = 2
    partial.train()
    seed_everything(999)  # a fresh process would start from other RNG states
    resumed_cfg = _config(tmp_path / "c", epoch_num=2, resume_from_checkpoint=str(tmp_path / "c" / "ckpt"))
    Trainer(second, data, toy_plugin.collate, resumed_cfg, save_model_fn=_save).train()
    for got, want in zip(second.parameters(), full.parameters()):
        assert torch.equal(got, want)


def test_resume_rejects_changed_batch_layout(toy_plugin, tmp_path):
    data = _examples(8)
    model = toy_plugin.build_model(toy_plugin.ToyParams(), seed=0)
    Trainer(model, data, toy_plugin.collate, _config(tmp_path, epoch_num=1), save_model_fn=_save).train()
    cfg = _config(tmp_path, micro_batch_size=4, resume_from_checkpoint=str(tmp_path / "ckpt" / "last"))
    with pytest.raises(ValueError, match="written with micro_batch_size=2, this run has 4"):
        Trainer(model, data, toy_plugin.collate, cfg, save_model_fn=_save).train()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(toy_plugin, tmp_path):
    model = toy_plugin.build_model(toy_plugin.ToyParams(nan_at_step=7), seed=0)
    cfg = _config(tmp_path, epoch_num=3, save_checkpoint_steps=2, gradient_accumulation_steps=1)
    trainer = Trainer(model, _examples(8), toy_plugin.collate, cfg, save_model_fn=_save)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss is nan at optimizer step 7 .*kept at"):
        trainer.train()
    root = tmp_path / "ckpt"
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    state = torch.load(root / "last" / STATE_FILE, weights_only=True)
    assert state["step"] == 6
    weights = torch.load(root / "last" / "pytorch_model.bin", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_bf16_autocast_on_cpu_trains(toy_plugin, tmp_path):
    model = toy_plugin.build_model(toy_plugin.ToyParams(), seed=0)
    before = copy.deepcopy(model.state_dict())
    cfg = _config(tmp_path, use_amp=True, epoch_num=1)
    trainer = Trainer(model, _examples(8), toy_plugin.collate, cfg, save_model_fn=_save)
    assert trainer.amp_dtype == torch.bfloat16
    result = trainer.train()
    assert math.isfinite(result["train_loss"])
    assert not torch.equal(before["net.0.weight"], model.state_dict()["net.0.weight"])


def closed_pid() -> int:
    """The id of a process that has exited (a writer killed mid-checkpoint)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_interrupted_swap_is_recovered_before_resume(toy_plugin, tmp_path):
    data = _examples(8)
    model = toy_plugin.build_model(toy_plugin.ToyParams(), seed=0)
    Trainer(model, data, toy_plugin.collate, _config(tmp_path, epoch_num=1), save_model_fn=_save).train()
    root = tmp_path / "ckpt"
    # a crash between "last -> .old-last" and ".last.PID-*.staging -> last": only the old copy and the
    # killed writer's staging folder remain
    (root / "last").rename(root / ".old-last")
    (root / f".last.{closed_pid()}-abcd1234.staging").mkdir()
    cfg = _config(tmp_path, epoch_num=2, resume_from_checkpoint=str(root / "last"))
    trainer = Trainer(model, data, toy_plugin.collate, cfg, save_model_fn=_save)
    assert trainer.train()["global_step"] == 4
    assert sorted(p.name for p in root.iterdir()) == ["last"]


def test_config_from_common_args():
    from appzoo.args import CommonArgs

    args = CommonArgs(micro_batch_size=3, use_amp=True, save_checkpoint_steps=5, checkpoint_dir="/x")
    cfg = TrainerConfig.from_args(args, num_workers=1)
    assert (cfg.micro_batch_size, cfg.use_amp, cfg.save_checkpoint_steps, cfg.checkpoint_dir, cfg.num_workers) == (
        3, True, 5, "/x", 1)
    assert cfg.learning_rate == args.learning_rate and cfg.random_seed == args.random_seed


def test_training_again_into_a_run_folder_is_refused_unless_overwritten(toy_plugin, tmp_path):
    data = _examples(8)
    model = toy_plugin.build_model(toy_plugin.ToyParams(), seed=0)
    Trainer(model, data, toy_plugin.collate, _config(tmp_path, epoch_num=1), valid_dataset=data,
            save_model_fn=_save).train()
    root = tmp_path / "ckpt"
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]
    with pytest.raises(ValueError, match=r"already holds a training run \(last/, best/\).*--overwrite_output_dir"):
        Trainer(model, data, toy_plugin.collate, _config(tmp_path, epoch_num=1), save_model_fn=_save)
    # overwriting starts afresh: no best/ of the old run is left for predict to load
    Trainer(model, data, toy_plugin.collate, _config(tmp_path, epoch_num=1, overwrite_output_dir=True),
            save_model_fn=_save).train()
    assert sorted(p.name for p in root.iterdir()) == ["last"]
