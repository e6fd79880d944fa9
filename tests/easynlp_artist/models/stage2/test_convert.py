"""The original minGPT / EasyNLP weight layout of the stage-2 GPT, checked against an independent forward."""

import pytest
import torch
from helpers.gpt_reference import raw_original_state_dict, reference_logits
from helpers.tiny_gpt import TINY, batch, knowledge

from easynlp_artist.models.stage2.convert import convert_original, to_original
from easynlp_artist.models.stage2.gpt import ArtistGPT, GPTConfig


@pytest.mark.parametrize("entity_dim", [None, 4])
def test_original_layout_matches_independent_forward(entity_dim):
    cfg = GPTConfig(**TINY, entity_dim=entity_dim)
    raw = raw_original_state_dict(cfg)
    model = ArtistGPT(cfg).eval()
    model.load_state_dict(convert_original({"transformer." + k: v for k, v in raw.items()}, cfg))
    text, img = batch()
    know = knowledge() if entity_dim else None
    with torch.no_grad():
        ours = model.image_logits(text, img, know)
    torch.testing.assert_close(ours, reference_logits(raw, cfg, text, img, know), rtol=1e-4, atol=1e-4)
    back = to_original(model.state_dict(), cfg)
    assert set(back) == set(raw)
    for k in raw:
        torch.testing.assert_close(back[k], raw[k])


def test_original_layout_errors_list_every_problem():
    cfg = GPTConfig(**TINY)
    raw = raw_original_state_dict(cfg)
    del raw["blocks.1.mlp.0.bias"]
    raw["extra.weight"] = torch.zeros(1)
    raw["head.weight"] = torch.zeros(7, cfg.n_embd)
    with pytest.raises(ValueError) as e:
        convert_original(raw, cfg)
    msg = str(e.value)
    assert "missing keys (1): blocks.1.mlp.0.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "head.weight: checkpoint (7, 16)" in msg
