from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from appzoo.params import ParamsError, parse_user_defined_parameters


@dataclass
class Params:
    pretrain_model_name_or_path: str = "alibaba-pai/pai-artist-knowl-base-zh"
    size: int = 256
    temperature: float = 1.0
    top_k: Optional[int] = None
    use_kv_cache: bool = True
    entity_emb_path: str | None = None
    image_shape: tuple[int, int] = (16, 16)
    layers: list[int] = field(default_factory=list)
    sampler: Literal["top_k", "greedy"] = "top_k"


def test_types_are_coerced():
    p = parse_user_defined_parameters(
        "size=128  temperature=0.7 top_k=32 use_kv_cache=False\nentity_emb_path=/x/e.pt image_shape=8,4 "
        "layers=1,2,3 sampler=greedy",
        Params,
    )
    assert p == Params(size=128, temperature=0.7, top_k=32, use_kv_cache=False, entity_emb_path="/x/e.pt",
                       image_shape=(8, 4), layers=[1, 2, 3], sampler="greedy")


def test_empty_gives_defaults_and_none_words():
    assert parse_user_defined_parameters("", Params) == Params()
    assert parse_user_defined_parameters(None, Params) == Params()
    assert parse_user_defined_parameters("top_k=None entity_emb_path=null", Params).top_k is None


def test_from_python_dict():
    p = parse_user_defined_parameters({"size": 64, "temperature": 2, "top_k": "5", "use_kv_cache": "no"}, Params)
    assert (p.size, p.temperature, p.top_k, p.use_kv_cache) == (64, 2.0, 5, False)
    with pytest.raises(ParamsError, match="size=True: expected an integer"):
        parse_user_defined_parameters({"size": True}, Params)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("szie=3", r"unknown key 'szie'; did you mean size\?"),
        ("size=3 size=4", "key 'size' is given twice"),
        ("size=3 oops", "token 2 'oops' is not of the form key=value"),
        ("=3", "token 1 '=3' is not of the form key=value"),
        ("size=abc", "size=abc: expected an integer, got 'abc'"),
        ("temperature=hot", "temperature=hot: expected a number"),
        ("use_kv_cache=False1", "expected a boolean"),
        ("image_shape=1,2,3", "expected 2 comma-separated values, got 3"),
        ("sampler=beam", "expected one of top_k, greedy"),
        ("size=None", "size=None: expected an integer, got .None."),
    ],
)
def test_errors(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_user_defined_parameters(raw, Params)


def test_missing_required_key():
    @dataclass
    class Required:
        path: str
        n: int = 1

    with pytest.raises(ParamsError, match="missing required key"):
        parse_user_defined_parameters("n=2", Required)
    assert parse_user_defined_parameters("path=a", Required).path == "a"
