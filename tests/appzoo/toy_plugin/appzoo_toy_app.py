"""Toy AppZoo applications for the tests: a tiny regression model trained and served through the
generic framework exactly the way a real app would use it."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from appzoo.app import BaseApp
from appzoo.args import CommonArgs
from appzoo.distributed import device_for_rank, run_sharded_predict
from appzoo.tables import Row, Schema, TableDataset, read_table
from appzoo.trainer import Trainer, TrainerConfig, evaluate_loss, seed_everything

FEATURES = 4


@dataclass
class ToyParams:
    hidden: int = 8
    dropout: float = 0.0
    kill_at_save: int = 0
    nan_at_step: int = 0
    scale: float = 1.0
    step_sleep: float = 0.0  # seconds per training forward, so that a test can act mid-run
    stall_at_step: int = 0  # the process of rank 1 stops working (its heartbeat goes on) at this forward


class ToyModel(nn.Module):
    def __init__(self, hidden: int = 8, dropout: float = 0.0, nan_at_step: int = 0, step_sleep: float = 0.0,
                 stall_at_step: int = 0):
        super().__init__()
        self.step_sleep, self.stall_at_step = step_sleep, stall_at_step
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.nan_at_step = nan_at_step
        self.train_calls = 0

    def forward(self, batch):
        pred = self.net(batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).mean()
        if self.training:
            time.sleep(self.step_sleep)
            self.train_calls += 1
            if self.train_calls == self.stall_at_step and os.environ.get("RANK") == "1":
                time.sleep(3600)
            if self.nan_at_step and self.train_calls >= self.nan_at_step:
                loss = loss * float("nan")
        return loss, {"mae": (pred - batch["y"]).abs().mean().item()}


def row_to_example(row: Row) -> dict:
    return {"x": torch.tensor(row["x"], dtype=torch.float32), "y": torch.tensor(row["y"], dtype=torch.float32)}


def collate(examples: list[dict]) -> dict:
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def build_model(params: ToyParams, seed: int) -> ToyModel:
    seed_everything(seed)
    return ToyModel(params.hidden, params.dropout, params.nan_at_step, params.step_sleep,
                    params.stall_at_step)


class _Saver:
    def __init__(self, kill_at_save: int):
        self.kill_at_save = kill_at_save
        self.saves = 0

    def __call__(self, model: nn.Module, directory: Path) -> None:
        self.saves += 1
        path = directory / "pytorch_model.bin"
        if self.saves == self.kill_at_save:
            path.write_bytes(b"half-written")
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save(model.state_dict(), path)


def load_weights(model: nn.Module, directory: Path) -> None:
    model.load_state_dict(torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True))


class ToyRegressionApp(BaseApp):
    name = "toy_regression"
    aliases = ("toy_alias",)
    description = "Toy regression app for the appzoo tests"
    Params = ToyParams

    def train(self, args: CommonArgs, params: ToyParams) -> dict:
        args.require("tables", "input_schema")
        schema = Schema.parse(args.input_schema)
        train_set = TableDataset(args.tables[0], schema, args.skip_first_line, transform=row_to_example)
        valid_set = (TableDataset(args.tables[1], schema, args.skip_first_line, transform=row_to_example)
                     if len(args.tables) > 1 else None)
        model = build_model(params, args.random_seed)
        trainer = Trainer(model, train_set, collate, TrainerConfig.from_args(args), valid_dataset=valid_set,
                          save_model_fn=_Saver(params.kill_at_save))
        return trainer.train()

    def evaluate(self, args: CommonArgs, params: ToyParams) -> dict:
        schema = Schema.parse(args.input_schema)
        dataset = TableDataset(args.tables[0], schema, args.skip_first_line, transform=row_to_example)
        model = build_model(params, args.random_seed)
        load_weights(model, Path(args.checkpoint_dir) / "last")
        return evaluate_loss(model, dataset, collate, batch_size=args.micro_batch_size)

    def predict(self, args: CommonArgs, params: ToyParams) -> dict:
        schema = Schema.parse(args.input_schema)
        model = build_model(params, args.random_seed).double().to(device_for_rank()).eval()
        load_weights(model, Path(args.checkpoint_dir) / "last")

        @torch.no_grad()
        def predict_batch(rows: list[Row]) -> list[list[str]]:
            x = torch.tensor([row["x"] for row in rows], dtype=torch.float64)
            preds = model.net(x).squeeze(-1) * params.scale
            return [[row["idx"], f"{p:.6f}", *(str(row[c]) for c in args.append_cols)]
                    for row, p in zip(rows, preds.tolist())]

        rows = read_table(args.tables[0], schema, args.skip_first_line)
        count = run_sharded_predict(rows, predict_batch, args.outputs, args.micro_batch_size)
        return {"rows": count}


@dataclass
class EchoParams:
    prefix: str = ""
    upper: bool = False
    fail_on: str = ""


class EchoApp(BaseApp):
    name = "toy_echo"
    description = "Echoes the first_sequence column (predict only)"
    Params = EchoParams

    def predict(self, args: CommonArgs, params: EchoParams) -> dict:
        schema = Schema.parse(args.input_schema)
        column = args.first_sequence
        schema.index(column)

        def echo(rows: list[Row]) -> list[list[str]]:
            out = []
            for row in rows:
                if params.fail_on and row[column] == params.fail_on:
                    raise row.error(column, f"refusing to echo {params.fail_on!r}")
                text = params.prefix + row[column]
                out.append([text.upper() if params.upper else text])
            return out

        rows = read_table(args.tables[0], schema, args.skip_first_line)
        return {"rows": run_sharded_predict(rows, echo, args.outputs, args.micro_batch_size)}
