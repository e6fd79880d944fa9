"""Compose docs/demo.png from the demo command's output table (one row of images per prompt).

    python docs/make_demo_grid.py [out/predictions.tsv] [docs/demo.png]
"""

import base64
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCALE = 3  # the tiny model draws 32 px images; enlarge them without smoothing


def main() -> int:
    table = Path(sys.argv[1] if len(sys.argv) > 1 else "out/predictions.tsv")
    target = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/demo.png")
    rows = []
    for line in table.read_text(encoding="utf-8").splitlines():
        cells = line.split("\t")
        images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in cells[-1].split(",")]
        rows.append(np.concatenate(images, axis=1))
        print(cells[0], cells[1])
    grid = np.concatenate(rows, axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * SCALE, grid.shape[0] * SCALE), Image.NEAREST)
    target.parent.mkdir(parents=True, exist_ok=True)
    img.save(target)
    print(f"wrote {target} ({img.size[0]}x{img.size[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
