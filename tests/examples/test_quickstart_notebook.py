"""examples/quickstart.ipynb runs top to bottom (a real Jupyter kernel) as a user opens it — working
directory ``examples/``, only the installed package, no ``PYTHONPATH`` — and its outputs stay out of git."""

import base64
import io
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

from easynlp_artist.pipeline import ArtistPipeline

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes_from_its_own_folder(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the grid before and after fine-tuning
    # 4 prompts × 6 images, enlarged for display (make_image_grid(scale=3)): 3 px per model pixel
    res = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh").model.config.vqgan.resolution
    for output in images:
        shown = Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
        assert shown.size == (6 * res * 3, 4 * res * 3)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
