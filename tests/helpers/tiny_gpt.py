"""A tiny stage-2 GPT with non-trivial weights, and inputs for it (text, image codes, entities)."""

import torch

from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig

TINY = dict(img_vocab_size=20, text_vocab_size=30, text_len=5, img_len=6, n_layer=2, n_head=2, n_embd=16)


def tiny(entity_dim=None, seed=0, **kw):
    torch.manual_seed(seed)
    model = ArtistGPT(GPTConfig(**{**TINY, **kw}, entity_dim=entity_dim)).eval()  # kw: other sizes
    # random, non-trivial weights everywhere (the init leaves biases and positions at zero)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def batch(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, TINY["text_vocab_size"], (b, TINY["text_len"]), generator=g)
    text[0, 3:] = 0  # right padding, as the tokenizer produces
    img = torch.randint(0, TINY["img_vocab_size"], (b, TINY["img_len"]), generator=g)
    return text, img


def knowledge(b=3, dim=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    # row 0: nested + overlapping spans; row 1: one entity; row 2: none
    spans = [[(0, 2), (1, 2), (1, 4)], [(2, 3)], []]
    vecs = [torch.randn(len(s), dim, generator=g) for s in spans]
    return KnowledgeInputs.from_lists(vecs[:b], spans[:b], dim)
