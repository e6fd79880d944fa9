"""ARTIST: knowledge-enhanced Chinese text-to-image generation."""
