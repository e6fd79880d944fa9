"""ARTIST: knowledge-enhanced Chinese text-to-image generation (VQGAN + GPT with entity fusion).

    >>> from easynlp_artist import ArtistPipeline
    >>> pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
    >>> pipe("一个番茄").images[0]
"""

from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.pipeline import ArtistPipeline, ArtistPipelineOutput

__all__ = ["ArtistConfig", "ArtistModel", "ArtistPipeline", "ArtistPipelineOutput"]
