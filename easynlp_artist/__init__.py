"""ARTIST: knowledge-enhanced Chinese text-to-image generation (VQGAN + GPT with entity fusion).

    >>> from easynlp_artist import ArtistPipeline
    >>> pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    >>> pipe("一个番茄").images[0]
"""

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("easynlp-artist")
except metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "unknown"

_EXPORTS = {
    "ArtistConfig": "easynlp_artist.configuration",
    "ArtistModel": "easynlp_artist.modeling",
    "ArtistPipeline": "easynlp_artist.pipeline",
    "ArtistPipelineOutput": "easynlp_artist.pipeline",
    "make_image_grid": "easynlp_artist.pipeline",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    # imported on first use, so `python -m easynlp_artist.<module>` does not import the module twice
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'easynlp_artist' has no attribute {name!r}")
