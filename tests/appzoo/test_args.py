from __future__ import annotations

import pytest

from appzoo.args import CommonArgs, UsageError
from modelzoo.files import parse_bool


def test_defaults_and_both_flag_forms():
    args = CommonArgs.from_argv([
        "--app_name=toy", "--mode", "predict", "--tables", "a.tsv, b.tsv,", "--micro_batch_size=8",
        "--epoch_num", "0.5", "--append_cols=idx,text", "--save_checkpoint_steps=50",
    ])
    assert args.app_name == "toy"
    assert args.mode == "predict"
    assert args.tables == ["a.tsv", "b.tsv"]
    assert (args.train_table, args.valid_table) == ("a.tsv", "b.tsv")
    assert args.micro_batch_size == 8 and args.epoch_num == 0.5
    assert args.append_cols == ["idx", "text"]
    assert args.save_checkpoint_steps == 50
    assert args.learning_rate == 5e-5 and args.random_seed == 1234 and args.worker_gpu == 1
    assert args.skip_first_line is False and args.use_amp is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("YES", True), ("1", True), ("False", False), ("false", False),
     ("no", False), ("0", False), ("No", False), ("on", True), ("OFF", False)],
)
def test_bool_flags_parse_all_spellings(text, expected):
    assert parse_bool(text) is expected
    args = CommonArgs.from_argv([f"--skip_first_line={text}", "--use_amp", text])
    assert args.skip_first_line is expected and args.use_amp is expected


def test_bare_bool_flag_means_true():
    assert CommonArgs.from_argv(["--use_amp"]).use_amp is True


@pytest.mark.parametrize("text", ["maybe", "2", "", "t"])
def test_bad_bool_is_an_error(text):
    with pytest.raises(UsageError, match="--skip_first_line: expected a boolean"):
        CommonArgs.from_argv([f"--skip_first_line={text}"])


def test_unknown_flag_has_hint():
    with pytest.raises(UsageError, match=r"unknown flag --lerning_rate; did you mean --learning_rate\?"):
        CommonArgs.from_argv(["--lerning_rate=0.1"])


def test_abbreviations_are_rejected():
    with pytest.raises(UsageError, match=r"unknown flag --micro_batch; did you mean --micro_batch_size\?"):
        CommonArgs.from_argv(["--micro_batch", "4"])


def test_unknown_flag_without_close_match():
    with pytest.raises(UsageError, match=r"^unknown flag --zzz$"):
        CommonArgs.from_argv(["--zzz=1"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--micro_batch_size=x"], "--micro_batch_size: expected an integer, got 'x'"),
        (["--micro_batch_size=0"], "--micro_batch_size must be >= 1"),
        (["--mode=export"], "--mode must be one of train, evaluate, predict, serve"),
        (["--epoch_num=0"], "--epoch_num must be > 0"),
        (["--warmup_proportion=1.5"], r"--warmup_proportion must be in \[0, 1\]"),
        (["--learning_rate=abc"], "--learning_rate: expected a number"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_values(argv, message):
    with pytest.raises(UsageError, match=message):
        CommonArgs.from_argv(argv)


def test_require_names_the_missing_flag():
    args = CommonArgs(app_name="toy", tables=["a.tsv"])
    args.require("tables")
    with pytest.raises(UsageError, match="--outputs is required for --app_name=toy --mode=train"):
        args.require("tables", "outputs")
