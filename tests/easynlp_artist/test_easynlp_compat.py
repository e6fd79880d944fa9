"""The EasyNLP knowledge release behaves as in EasyNLP: its fusion ("output"), its files, its command.

The reference (``helpers.gpt_reference.release_logits``) is a plain-torch forward from the raw
original-layout tensors and EasyNLP's (entity_num, text_len) id matrix, row 0 of entity2vec.pt
filling every uncovered cell.
"""

import base64
import io
import json
import logging

import numpy as np
import pytest
import torch
from helpers.gpt_reference import raw_original_state_dict, release_greedy, release_id_matrix, release_logits
from helpers.tiny import TINY_VQGAN, randomize_, tiny_artist_config
from PIL import Image

from appzoo.cli import main as easynlp
from easynlp_artist.knowledge.batch import KnowledgeInputs
from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.models.stage1.convert import to_taming_state_dict
from easynlp_artist.models.stage1.vqgan import VQGAN, VQGANConfig, images_to_uint8
from easynlp_artist.models.stage2.sampling import SamplingConfig, sample_image_tokens
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import char_vocab, write_vocab

CHARS = "一个红色的圆形番茄柠檬黄在白背景上和大小"
NAMES = ["红色", "圆形", "番茄", "大番茄", "一个", "柠檬", "背景"]  # entity ids 1.. (row 0 is "nothing")
ENTITY_NUM = 4
# prompt → its entities (id, pos_s, pos_e inclusive), as the matcher finds them: 3, 0 and ENTITY_NUM
PROMPTS = {
    "红色的圆形番茄": [(1, 0, 1), (2, 3, 4), (3, 5, 6)],
    "在白上": [],
    "一个大番茄和柠檬": [(5, 0, 1), (4, 2, 4), (3, 3, 4), (6, 6, 7)],
}
TEXT_LEN = 12


def _release(tmp_path):
    """A knowledge checkpoint in the release's layout from raw tensors (no knowledge_fusion in its
    config.json, as the release), and its entity files in a folder of their own."""
    vocab = char_vocab(CHARS)
    cfg = tiny_artist_config(len(vocab), entity_dim=4, text_len=TEXT_LEN)
    ckpt = tmp_path / "release"
    ckpt.mkdir()
    write_vocab(vocab, ckpt / "vocab.txt")
    sd = raw_original_state_dict(cfg.gpt, seed=5)
    sd["ent_emb.weight"] *= 4  # entities that move the first code
    vq = randomize_(VQGAN(VQGANConfig(**TINY_VQGAN)), seed=12).eval()
    state = {"transformer." + k: v for k, v in sd.items()}
    state.update(to_taming_state_dict(vq, prefix="first_stage_model."))
    torch.save(state, ckpt / "pytorch_model.bin")
    flat = cfg.to_original()
    del flat["knowledge_fusion"]
    (ckpt / "config.json").write_text(json.dumps(flat))
    entity2vec = torch.randn(len(NAMES) + 1, 4, generator=torch.Generator().manual_seed(1)) * 2
    kg = tmp_path / "kg"
    EntityStore(NAMES, list(range(1, len(NAMES) + 1)), entity2vec).save_easynlp(kg)
    return ckpt, kg, cfg, sd, vq, entity2vec


def _knowledge(entities_per_text, entity2vec):
    vectors = [entity2vec[[i for i, _, _ in ents]].reshape(len(ents), -1) for ents in entities_per_text]
    spans = [[(s, e + 1) for _, s, e in ents] for ents in entities_per_text]
    return KnowledgeInputs.from_lists(vectors, spans, entity2vec.shape[1]).with_nothing(entity2vec[0], ENTITY_NUM)


def _text(pipe, prompts):
    return pipe.encode_prompts(prompts)[0]


def test_the_release_loads_in_output_mode_and_matches_the_reference_forward(tmp_path):
    ckpt, kg, cfg, sd, _, entity2vec = _release(tmp_path)
    pipe = ArtistPipeline.from_pretrained(ckpt, entities=EntityStore.load(kg / "entity2vec.pt"),
                                          lattice={"entity_num": ENTITY_NUM})
    assert pipe.model.config.gpt.knowledge_fusion == "output"
    gpt = pipe.model.gpt
    ents = list(PROMPTS.values())
    text, know = pipe.encode_prompts(list(PROMPTS))
    # the matcher finds the entities written above (slot order does not matter to the release)
    assert sorted(zip(know.mask.sum(1).tolist())) == sorted((len(e),) for e in ents)
    M = [release_id_matrix(e, ENTITY_NUM, TEXT_LEN) for e in ents]
    img = torch.randint(0, cfg.gpt.img_vocab_size, (3, cfg.gpt.img_len), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = gpt.image_logits(text, img, know)
        ref = release_logits(sd, cfg.gpt, text, img, M, entity2vec)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
        plain = release_logits(sd, cfg.gpt, text, img, None, entity2vec)
        # only the logits of the first image token change, for every entity count (0 included)
        torch.testing.assert_close(ours[:, 1:], plain[:, 1:], rtol=1e-4, atol=1e-4)
        assert ((ours[:, 0] - plain[:, 0]).abs().amax(-1) > 1e-2).all()
        # the row-0 fill and the mode matter here: either change gives other logits
        no_fill = entity2vec.clone()
        no_fill[0] = 0
        assert not torch.allclose(ours, release_logits(sd, cfg.gpt, text, img, M, no_fill), atol=1e-3)
        know_input = KnowledgeInputs(know.vectors, know.starts, know.ends, know.mask)
        gpt.config.knowledge_fusion = "input"
        assert not torch.allclose(ours, gpt.image_logits(text, img, know_input), atol=1e-3)
        gpt.config.knowledge_fusion = "output"

    greedy = release_greedy(sd, cfg.gpt, text, M, entity2vec)
    assert not torch.equal(greedy[:, 0], release_greedy(sd, cfg.gpt, text, None, entity2vec)[:, 0])
    for use_cache in (True, False):
        codes = sample_image_tokens(gpt, text, know, sampling=SamplingConfig(top_k=1), use_cache=use_cache)
        assert torch.equal(codes, greedy), use_cache


def test_output_mode_needs_the_nothing_vector():
    cfg = tiny_artist_config(entity_dim=3, knowledge_fusion="output")
    gpt = ArtistModel(cfg).gpt.eval()
    know = KnowledgeInputs.from_lists([torch.randn(1, 3)], [[(0, 2)]], 3)
    with pytest.raises(ValueError, match="needs the 'nothing' vector"):
        gpt.image_logits(torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 64, dtype=torch.long), know)
    with pytest.raises(ValueError, match="knowledge_fusion must be one of"):
        tiny_artist_config(entity_dim=3, knowledge_fusion="middle")


def test_output_mode_trains(tmp_path):
    """Every forward fuses (the release's in-place write failed in backward; ours does not)."""
    cfg = tiny_artist_config(entity_dim=3, knowledge_fusion="output")
    gpt = randomize_(ArtistModel(cfg).gpt).train()
    know = KnowledgeInputs.from_lists([torch.randn(1, 3)], [[(0, 2)]], 3).with_nothing(torch.randn(3), 2)
    gpt(torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 64, dtype=torch.long), know).backward()
    assert gpt.ent_emb.weight.grad.abs().sum() > 0


def test_the_mode_is_saved_and_can_be_overridden(tmp_path):
    ckpt, kg, *_ = _release(tmp_path)
    pipe = ArtistPipeline.from_pretrained(ckpt, entities=EntityStore.load(kg))
    # fine-tuning and saving keep the release's mode, in our layout and in the original one
    pipe.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["gpt"]["knowledge_fusion"] == "output"
    assert ArtistPipeline.from_pretrained(tmp_path / "ours").model.config.gpt.knowledge_fusion == "output"
    pipe.model.config.gpt.knowledge_fusion = "input"
    pipe.save_pretrained(tmp_path / "orig", original_layout=True)
    assert json.loads((tmp_path / "orig" / "config.json").read_text())["knowledge_fusion"] == "input"
    assert ArtistPipeline.from_pretrained(tmp_path / "orig").model.config.gpt.knowledge_fusion == "input"
    # a model made here fuses at the input
    assert tiny_artist_config(entity_dim=3).gpt.knowledge_fusion == "input"


def test_pipeline_save_pretrained_original_layout_writes_the_release_files(tmp_path):
    ckpt, kg, *_ = _release(tmp_path)
    pipe = ArtistPipeline.from_pretrained(ckpt, entities=EntityStore.load(kg))
    out = pipe.save_pretrained(tmp_path / "again", original_layout=True)
    names = {p.name for p in out.iterdir()}
    assert {"pytorch_model.bin", "config.json", "vocab.txt", "entity2id.txt", "entity2vec.pt"} <= names
    assert not names & {"model.safetensors", "entities.safetensors"}
    assert (out / "vocab.txt").read_text() == (ckpt / "vocab.txt").read_text()
    a = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    b = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    again = EntityStore.load(out)
    assert again.names == NAMES and torch.equal(again.vectors, EntityStore.load(kg).vectors)


def test_entity2vec_alone_or_with_entity2id_beside_it(tmp_path):
    _, kg, *_ = _release(tmp_path)
    beside = EntityStore.load(kg / "entity2vec.pt")  # entity2id.txt is beside it: names too
    assert beside.names == NAMES
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    (alone_dir / "entity2vec.pt").write_bytes((kg / "entity2vec.pt").read_bytes())
    alone = EntityStore.load(alone_dir / "entity2vec.pt")
    assert len(alone) == 0 and alone.vectors_only and torch.equal(alone.vectors, beside.vectors)
    assert alone.has_id(0) and alone.has_id(len(NAMES)) and not alone.has_id(len(NAMES) + 1)
    # it stays a store of vectors only when saved in either format (fine-tuning with it, say)
    alone.save(tmp_path / "ours")
    alone.save_easynlp(tmp_path / "orig")
    assert not (tmp_path / "orig" / "entity2id.txt").exists()
    for again in (EntityStore.load(tmp_path / "ours"), EntityStore.load(tmp_path / "orig")):
        assert again.vectors_only and torch.equal(again.vectors, alone.vectors)


def test_training_only_keys_of_a_real_release_are_skipped_with_one_line(tmp_path, caplog):
    ckpt, *_ = _release(tmp_path)
    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    state["first_stage_model.loss.discriminator.main.0.weight"] = torch.zeros(2, 3, 4, 4)
    state["first_stage_model.loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(2)
    state["first_stage_model.loss.logvar"] = torch.zeros(())
    torch.save(state, ckpt / "pytorch_model.bin")
    with caplog.at_level(logging.INFO, logger="easynlp_artist.modeling"):
        ArtistModel.from_pretrained(ckpt, vqgan=VQGANConfig(**TINY_VQGAN))
    lines = [r.getMessage() for r in caplog.records if "training-only" in r.getMessage()]
    assert len(lines) == 1 and "3 training-only keys first_stage_model.loss.*" in lines[0]
    state["first_stage_model.encoder.stray"] = torch.zeros(1)
    torch.save(state, ckpt / "pytorch_model.bin")
    with pytest.raises(ValueError, match="encoder.stray"):
        ArtistModel.from_pretrained(ckpt, vqgan=VQGANConfig(**TINY_VQGAN))


def _predict(tmp_path, ckpt, table, udp, schema=None):
    out = tmp_path / f"out-{table.stem}.tsv"
    args = ["--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={out}",
            f"--checkpoint_dir={ckpt}", "--output_schema=idx,gen_imgbase64",
            f"--user_defined_parameters={udp} top_k=1 entity_num={ENTITY_NUM}"]
    if schema:
        args.append(f"--input_schema={schema}")
    assert easynlp(args) == 0
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(line.split("\t")[1]))))
            for line in out.read_text(encoding="utf-8").splitlines()]


def test_the_easynlp_command_predicts_the_release_like_the_reference(tmp_path):
    ckpt, kg, cfg, sd, vq, entity2vec = _release(tmp_path)
    prompts, ents = list(PROMPTS), list(PROMPTS.values())
    pipe = ArtistPipeline.from_pretrained(ckpt)
    M = [release_id_matrix(e, ENTITY_NUM, TEXT_LEN) for e in ents]
    codes = release_greedy(sd, cfg.gpt, _text(pipe, prompts), M, entity2vec)
    with torch.no_grad():
        expected = images_to_uint8(vq.decode(codes)).numpy()

    # on-the-fly matching: entity2id.txt beside entity2vec.pt, no entity_map
    raw = tmp_path / "raw.tsv"
    raw.write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(prompts)), encoding="utf-8")
    got = _predict(tmp_path, ckpt, raw, f"entity_emb_path={kg / 'entity2vec.pt'}")
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))

    # a preprocessed table with entity2vec.pt alone
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "entity2vec.pt").write_bytes((kg / "entity2vec.pt").read_bytes())
    pre = tmp_path / "pre.tsv"
    with pre.open("w", encoding="utf-8") as f:
        for i, (p, e) in enumerate(PROMPTS.items()):
            n = len(p)
            lex = " ".join(str(x) for x, _, _ in e)
            pos_s = " ".join(map(str, [*range(n), *(s for _, s, _ in e)]))
            pos_e = " ".join(map(str, [*range(n), *(t for _, _, t in e)]))
            f.write(f"{i}\t{p}\t{lex}\t{pos_s}\t{pos_e}\t{n}\n")
    schema = "idx:str:1,text:str:1,lex_id:str:1,pos_s:str:1,pos_e:str:1,token_len:str:1"
    got = _predict(tmp_path, ckpt, pre, f"entity_emb_path={alone / 'entity2vec.pt'}", schema)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))

    # knowledge_fusion=input is the override: other images
    got = _predict(tmp_path, ckpt, raw, f"entity_emb_path={kg / 'entity2vec.pt'} knowledge_fusion=input")
    assert not all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("given, expected", [(None, "output"), ("input", "input")])
def test_fine_tuning_the_release_keeps_its_mode_unless_asked(tmp_path, given, expected):
    from appzoo.args import CommonArgs
    from appzoo.params import parse_user_defined_parameters
    from easynlp_artist.loading import load_pipeline
    from easynlp_artist.params import ArtistParams

    ckpt, kg, *_ = _release(tmp_path)
    udp = f"pretrain_model_name_or_path={ckpt} entity_emb_path={kg / 'entity2vec.pt'}"
    if given:
        udp += f" knowledge_fusion={given}"
    pipe = load_pipeline(CommonArgs(mode="train"), parse_user_defined_parameters(udp, ArtistParams), torch.device("cpu"))
    assert pipe.model.config.gpt.knowledge_fusion == pipe.model.gpt.config.knowledge_fusion == expected
    pipe.save_pretrained(tmp_path / "ft")
    assert ArtistPipeline.from_pretrained(tmp_path / "ft").model.config.gpt.knowledge_fusion == expected
