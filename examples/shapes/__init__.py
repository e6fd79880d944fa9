"""The synthetic shapes-and-knowledge world (images, captions, knowledge graph) and its attribute reader."""
