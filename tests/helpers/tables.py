"""Small real tables for app tests: PNG images in base64, texts, an entity dictionary, a vocab."""

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easynlp_artist.tokenization import char_vocab, write_vocab

COLOURS = {"红": (220, 30, 30), "绿": (30, 200, 60), "蓝": (40, 60, 220), "黄": (230, 210, 40)}
ENTITIES = {"番茄": "红", "黄瓜": "绿", "柠檬": "黄", "蓝莓": "蓝"}


def png_b64(rgb, size=16, square=True, mode="RGB") -> str:
    """A PNG of a coloured square (or disc) on white, as standard base64."""
    img = np.full((size, size, 3), 255, np.uint8)
    y, x = np.mgrid[:size, :size]
    c = (size - 1) / 2
    mask = (abs(x - c) < size / 3) & (abs(y - c) < size / 3) if square else (x - c) ** 2 + (y - c) ** 2 < (size / 3) ** 2
    img[mask] = rgb
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def rows(n, seed=0, size=16):
    """(idx, text, imgbase64) rows naming a colour directly or through an entity."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS) + list(ENTITIES)
    out = []
    for i in range(n):
        word = names[rng.integers(len(names))]
        colour = ENTITIES.get(word, word)
        text = f"一个{word}色的方块" if word in COLOURS else f"一个{word}"
        out.append((str(i), text, png_b64(COLOURS[colour], size, square=bool(rng.integers(2)))))
    return out


def write_table(path: Path, table_rows) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in table_rows), encoding="utf-8")
    return path


def write_world(root: Path, n_train=12, n_valid=4, size=16) -> dict:
    """train/valid/test tables, vocab.txt, entity2id.txt + entity2vec.pt under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    train = write_table(root / "train.tsv", rows(n_train, 0, size))
    valid = write_table(root / "valid.tsv", rows(n_valid, 1, size))
    test = write_table(root / "test.tsv", [(r[0], r[1]) for r in rows(5, 2, size)])
    chars = "一个色的方块" + "".join(COLOURS) + "".join(ENTITIES)
    write_vocab(char_vocab(chars), root / "vocab.txt")
    (root / "entity2id.txt").write_text(
        f"{len(ENTITIES)}\n" + "".join(f"{n}\t{i}\n" for i, n in enumerate(ENTITIES)), encoding="utf-8"
    )
    torch.save(torch.randn(len(ENTITIES), 6, generator=torch.Generator().manual_seed(0)), root / "entity2vec.pt")
    return {"train": train, "valid": valid, "test": test, "vocab": root / "vocab.txt",
            "entity_map": root / "entity2id.txt", "entity_emb": root / "entity2vec.pt"}
