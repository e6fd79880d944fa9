"""Knowledge pipeline: entity store, lexicon matching (word lattice), preprocessing, TransE."""
