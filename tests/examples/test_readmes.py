"""README.zh-CN.md is the Chinese README.md: both link each other at the top, and every code block
(the commands users copy) is the same in both, in the same order."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n.*?^```$", text, flags=re.S | re.M)


def test_chinese_readme_has_the_same_commands_and_sections():
    en = (ROOT / "README.md").read_text(encoding="utf-8")
    zh = (ROOT / "README.zh-CN.md").read_text(encoding="utf-8")
    assert "[中文](README.zh-CN.md)" in en.split("\n\n")[1]
    assert "[English](README.md)" in zh.split("\n\n")[1]
    assert code_blocks(en) and code_blocks(en) == code_blocks(zh)
    sections = [line for line in en.splitlines() if line.startswith("## ")]
    assert len(sections) == len([line for line in zh.splitlines() if line.startswith("## ")])
