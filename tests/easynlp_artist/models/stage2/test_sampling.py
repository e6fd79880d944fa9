"""The sampling loop's step callback (streaming previews) and speculative Jacobi decoding."""

import torch
from helpers.tiny_gpt import TINY, batch, tiny

from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens


def test_callback_sees_each_drawn_position_once_with_the_final_codes_before_it():
    model = tiny()
    text, img = batch()
    seen = []
    out = sample_image_tokens(model, text, num_images_per_prompt=2, sampling=SamplingConfig(top_k=5),
                              image_prefix=img[:, :2], generator=torch.Generator().manual_seed(3),
                              callback=lambda i, codes: seen.append((i, codes.clone())))
    assert [i for i, _ in seen] == list(range(2, TINY["img_len"]))  # the prefix is not drawn
    for i, codes in seen:
        assert codes.shape == out.shape
        assert torch.equal(codes[:, : i + 1], out[:, : i + 1])
    assert torch.equal(seen[0][1][:, :2], img[:, :2].repeat_interleave(2, 0))
