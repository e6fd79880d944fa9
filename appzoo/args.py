"""EasyNLP's command-line flags, parsed once into a typed :class:`CommonArgs`.

Both ``--flag=value`` and ``--flag value`` work. Flags are never abbreviated, a mistyped flag is an
error with a "did you mean" hint, and booleans accept only true/false, 1/0, yes/no, on/off (any case); a bare
boolean flag (``--use_amp``) means true.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from modelzoo.files import parse_bool

MODES = ("train", "evaluate", "predict", "serve")

class UsageError(ValueError):
    """Bad command-line input; the CLI prints it as one line and exits with status 2."""


def split_list(text: str) -> list[str]:
    """Comma-separated list; surrounding blanks and empty items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass
class TrainingArguments:
    """The training flags, defined once: :class:`CommonArgs` embeds them and
    ``appzoo.trainer.TrainerConfig`` extends them with settings that have no flag."""

    checkpoint_dir: str | None = None  # train: ./checkpoint when not given
    micro_batch_size: int = 2
    epoch_num: float = 3.0
    learning_rate: float = 5e-5
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    warmup_proportion: float = 0.1
    gradient_accumulation_steps: int = 1
    logging_steps: int = 100
    save_checkpoint_steps: int | None = None
    resume_from_checkpoint: str | None = None
    overwrite_output_dir: bool = False
    random_seed: int = 1234
    use_amp: bool = False

    def __post_init__(self) -> None:
        for name in ("micro_batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.save_checkpoint_steps is not None and self.save_checkpoint_steps < 1:
            raise UsageError(f"--save_checkpoint_steps must be >= 1, got {self.save_checkpoint_steps}")
        if not self.epoch_num > 0:
            raise UsageError(f"--epoch_num must be > 0, got {self.epoch_num}")
        if not 0.0 <= self.warmup_proportion <= 1.0:
            raise UsageError(f"--warmup_proportion must be in [0, 1], got {self.warmup_proportion}")
        for name in ("learning_rate", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be >= 0, got {getattr(self, name)}")

    def training_arguments(self) -> dict:
        """These flags' values, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainingArguments)}


@dataclass
class CommonArgs(TrainingArguments):
    """The flags shared by every AppZoo application (EasyNLP names and defaults)."""

    mode: Literal["train", "evaluate", "predict", "serve"] = "train"
    app_name: str | None = None
    tables: list[str] = field(default_factory=list)
    outputs: str | None = None
    input_schema: str | None = None
    output_schema: str | None = None
    append_cols: list[str] = field(default_factory=list)
    first_sequence: str | None = None
    second_sequence: str | None = None
    skip_first_line: bool = False
    worker_gpu: int = 1
    worker_count: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    peer_timeout: float = 60.0
    collective_timeout: float = 1800.0
    max_restarts: int = 0
    sequence_length: int = 16
    user_defined_parameters: str = ""
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        super().__post_init__()
        for name in ("worker_gpu", "worker_count", "sequence_length"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("peer_timeout", "collective_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.max_restarts < 0:
            raise UsageError(f"--max_restarts must be >= 0, got {self.max_restarts}")
        for name in ("master_port", "port"):
            if not 0 < getattr(self, name) < 65536:
                raise UsageError(f"--{name} must be in 1..65535, got {getattr(self, name)}")

    def require(self, *names: str) -> None:
        """Raise UsageError naming the first of ``names`` (flag names) that is unset or empty."""
        for name in names:
            if getattr(self, name) in (None, "", []):
                raise UsageError(f"--{name} is required for --app_name={self.app_name} --mode={self.mode}")

    @property
    def train_table(self) -> str | None:
        """First entry of ``--tables`` (the training table in train mode, the input otherwise)."""
        return self.tables[0] if self.tables else None

    @property
    def valid_table(self) -> str | None:
        """Second entry of ``--tables`` (the validation table), if given."""
        return self.tables[1] if len(self.tables) > 1 else None

    @property
    def world_processes(self) -> int:
        """Total number of processes: ``worker_gpu`` per machine times ``worker_count`` machines."""
        return self.worker_gpu * self.worker_count

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> CommonArgs:
        """Parse command-line flags; raises :class:`UsageError` on any bad flag or value."""
        namespace = _parse(build_parser(), list(argv))
        given = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in given.items() if value is not None})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def _bool_type(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _optional_int(text: str) -> int | None:
    if text.strip().lower() in ("", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _typed(kind: type, label: str):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {label}, got {text!r}") from None

    convert.__name__ = label
    return convert


_HELP = {
    "mode": "train, evaluate, predict or serve",
    "app_name": "the application to run (see the list below; aliases work too)",
    "tables": "comma-separated input tables: train,valid in train mode; the input table otherwise",
    "outputs": "output table written by predict",
    "input_schema": "columns of the input tables, e.g. idx:str:1,text:str:1,imgbase64:str:1",
    "output_schema": "comma-separated columns that predict writes",
    "append_cols": "comma-separated input columns copied into the predict output",
    "first_sequence": "name of the input column holding the first text",
    "second_sequence": "name of the input column holding the second text",
    "skip_first_line": "skip a header line in the input tables",
    "checkpoint_dir": "where train writes checkpoints (default ./checkpoint) and evaluate/predict read the model",
    "micro_batch_size": "examples per process per forward pass",
    "epoch_num": "number of training epochs (fractions allowed)",
    "learning_rate": "peak learning rate of AdamW",
    "weight_decay": "AdamW weight decay (not applied to biases, norms, embeddings)",
    "max_grad_norm": "clip the gradient norm to this value (0 disables)",
    "warmup_proportion": "fraction of optimizer steps spent warming the learning rate up",
    "gradient_accumulation_steps": "micro batches per optimizer step",
    "logging_steps": "log every this many optimizer steps",
    "save_checkpoint_steps": "validate and checkpoint every this many optimizer steps (default: at the end)",
    "resume_from_checkpoint": "checkpoint directory to resume training from",
    "overwrite_output_dir": "train into a --checkpoint_dir that already holds a run (its last/ and best/ are removed)",
    "random_seed": "seed of python, numpy and torch random generators and of the data order",
    "worker_gpu": "processes per machine (GPUs; CPU processes when there is no GPU)",
    "worker_count": "number of machines",
    "master_addr": "address of the machine with node rank 0 (several machines)",
    "master_port": "port on master_addr (several machines)",
    "peer_timeout": "seconds without a heartbeat from another process or machine after which the run stops, "
                    "naming it (several processes)",
    "collective_timeout": "seconds one collective operation (a gradient all-reduce, a barrier) may wait for the other "
                          "processes before the run stops: catches a process that is alive but stuck (several processes)",
    "max_restarts": "restart the processes this many times after one of them fails; training continues from the "
                    "last checkpoint this launch wrote in --checkpoint_dir (several processes)",
    "use_amp": "mixed precision: bf16 autocast (fp16 + loss scaling on GPUs without bf16)",
    "sequence_length": "maximum text length in tokens",
    "user_defined_parameters": "application parameters, whitespace-separated key=value",
    "host": "address serve listens on (loopback by default; another address exposes the server)",
    "port": "TCP port serve listens on",
}


def build_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser of :class:`CommonArgs` (``-h/--help`` is a plain flag the CLI handles)."""
    parser = _Parser(
        prog="easynlp",
        description="EasyNLP-compatible AppZoo command.",
        epilog=epilog,
        allow_abbrev=False,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and the installed apps")
    defaults = CommonArgs()
    for f in dataclasses.fields(CommonArgs):
        flag = f"--{f.name}"
        default = getattr(defaults, f.name)
        help_text = f"{_HELP[f.name]} (default: {default!r})"
        if f.type in ("bool",):
            parser.add_argument(flag, type=_bool_type, nargs="?", const=True, default=None,
                                metavar="BOOL", help=help_text)
        elif f.name in ("tables", "append_cols"):
            parser.add_argument(flag, type=split_list, default=None, metavar="A,B", help=help_text)
        elif f.name == "save_checkpoint_steps":
            parser.add_argument(flag, type=_optional_int, default=None, metavar="N", help=help_text)
        elif f.type == "int":
            parser.add_argument(flag, type=_typed(int, "an integer"), default=None, metavar="N",
                                help=help_text)
        elif f.type == "float":
            parser.add_argument(flag, type=_typed(float, "a number"), default=None, metavar="X",
                                help=help_text)
        else:
            parser.add_argument(flag, type=str, default=None, metavar="TEXT", help=help_text)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    namespace, extras = parser.parse_known_args(argv)
    if extras:
        raise UsageError(_unknown_message(parser, extras[0]))
    return namespace


def _unknown_message(parser: argparse.ArgumentParser, token: str) -> str:
    if not token.startswith("-"):
        return f"unexpected argument {token!r} (flags look like --name=value)"
    flag = token.split("=", 1)[0]
    known = [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown flag {flag}{hint}"
