"""The shapes world: builder determinism, table formats, knowledge graph, held-out set, attribute reader."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples.shapes.attributes import read_attributes  # noqa: E402
from examples.shapes.evaluate import main as evaluate_main  # noqa: E402
from examples.shapes.evaluate import parse_prompt, score_images  # noqa: E402
from examples.shapes.knowledge import ENTITIES, ENTITY_BY_NAME, held_out_entities, seen_entities  # noqa: E402
from examples.shapes.palette import BACKGROUNDS, COLOURS, IMAGE_SIZE, SHAPES  # noqa: E402
from examples.shapes.world import (  # noqa: E402
    EVAL_KINDS,
    PHRASINGS,
    TRAIN_PHRASINGS,
    EvalPrompt,
    all_attribute_captions,
    all_entity_captions,
    build_world,
    decode_base64_image,
    eval_prompts,
    main,
    png_base64,
    random_scene,
    render,
    render_scene,
)

N_TRAIN, N_VALID, N_TEST = 240, 60, 30
FILES = (
    "train.tsv",
    "valid.tsv",
    "test.tsv",
    "eval_prompts.tsv",
    "triples.tsv",
    "entity2id.txt",
    "relation2id.txt",
    "entities.json",
)

READER_SEED = 20261124
"""Seed of the fresh renders the reader is measured on (the builder's default seed is 0)."""

READER_SAMPLES = 288
"""12 images of each of the 24 colour×shape pairs."""

BLUR_JPEG_MIN_ACCURACY = 0.97
"""Reader accuracy required after Gaussian blur (radius 1) + JPEG quality 50; measured 0.997-0.999 (1000+ images)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=0, n_train=N_TRAIN, n_valid=N_VALID, n_test_prompts=N_TEST)
    return out


def _rows(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def _expected_attributes(text: str) -> tuple[str, str]:
    """The (colour, shape) a caption of the world asks for."""
    parsed = parse_prompt(text)
    assert parsed is not None, text
    return parsed.colour, parsed.shape


def test_same_seed_gives_identical_files(world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_world(again, seed=0, n_train=N_TRAIN, n_valid=N_VALID, n_test_prompts=N_TEST)
    for name in FILES:
        assert (again / name).read_bytes() == (world / name).read_bytes(), name
    other = tmp_path / "other"
    build_world(other, seed=1, n_train=N_TRAIN, n_valid=N_VALID, n_test_prompts=N_TEST)
    assert (other / "train.tsv").read_bytes() != (world / "train.tsv").read_bytes()
    assert not list(world.glob(".*.tmp"))


def test_image_tables_parse_and_decode(world: Path) -> None:
    for name, count in (("train.tsv", N_TRAIN), ("valid.tsv", N_VALID)):
        rows = _rows(world / name)
        assert len(rows) == count
        assert [r[0] for r in rows] == [str(i) for i in range(count)]
        for _idx, text, b64 in rows:
            assert text and "\t" not in text
            image = decode_base64_image(b64)
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
        with Image.open(io.BytesIO(__import__("base64").b64decode(rows[0][2], validate=True))) as raw:
            assert raw.format == "PNG"


def test_prompt_tables_parse(world: Path) -> None:
    test_rows = _rows(world / "test.tsv")
    assert len(test_rows) == N_TEST and all(len(r) == 2 for r in test_rows)
    eval_rows = _rows(world / "eval_prompts.tsv")
    assert eval_rows[0] == ["kind", "prompt", "colour", "shape", "family"]
    body = eval_rows[1:]
    assert {r[0] for r in body} == set(EVAL_KINDS)
    assert {r[4] for r in body} == {p.name for p in PHRASINGS}
    colour_names, shape_names = {c.name for c in COLOURS}, {s.name for s in SHAPES}
    assert all(r[2] in colour_names and r[3] in shape_names for r in body)
    # every kind in every family: each pair, each seen and each held-out entity once
    per_family = Counter((r[0], r[4]) for r in body)
    for phrasing in PHRASINGS:
        assert per_family["attribute", phrasing.name] == len(COLOURS) * len(SHAPES)
        assert per_family["seen_entity", phrasing.name] == len(seen_entities())
        assert per_family["heldout_entity", phrasing.name] == len(held_out_entities())
    held = {e.name for e in held_out_entities()}
    heldout_prompts = [r for r in body if r[0] == "heldout_entity"]
    for _kind, prompt, colour, shape, _family in heldout_prompts:
        (name,) = [n for n in held if n in prompt]
        assert (ENTITY_BY_NAME[name].colour, ENTITY_BY_NAME[name].shape) == (colour, shape)


def test_held_out_entities_never_in_captions(world: Path) -> None:
    held = [e.name for e in held_out_entities()]
    assert 0.2 <= len(held) / len(ENTITIES) <= 0.3
    for name in ("train.tsv", "valid.tsv"):
        for _, text, _ in _rows(world / name):
            assert not any(h in text for h in held), text
    seen_pairs = {(e.colour, e.shape) for e in seen_entities()}
    assert all((e.colour, e.shape) in seen_pairs for e in held_out_entities())


def test_held_out_phrasings_never_in_captions(world: Path) -> None:
    held_families = [p for p in PHRASINGS if p.held_out]
    assert held_families and len(held_families) < len(PHRASINGS)
    held_captions, trained_captions = all_captions_of(held_families), all_captions_of(TRAIN_PHRASINGS)
    assert not held_captions & trained_captions
    for name in ("train.tsv", "valid.tsv"):
        for _, text, _ in _rows(world / name):
            assert text not in held_captions, text
            assert text in trained_captions, text


def all_captions_of(phrasings) -> set[str]:
    return set(all_attribute_captions(phrasings)) | {c for _, c in all_entity_captions(phrasings)}


def test_captions_cover_entities_and_attributes(tmp_path: Path) -> None:
    build_world(tmp_path, seed=3, n_train=2000, n_valid=0, n_test_prompts=0)
    texts = [r[1] for r in _rows(tmp_path / "train.tsv")]
    named = {e.name for e in seen_entities() if any(e.name in t for t in texts)}
    assert named == {e.name for e in seen_entities()}
    pairs = {_expected_attributes(t) for t in texts if not any(e.name in t for e in ENTITIES)}
    assert len(pairs) == len(COLOURS) * len(SHAPES)
    assert (tmp_path / "valid.tsv").read_text(encoding="utf-8") == ""
    # every template of every training family is drawn
    for phrasing in TRAIN_PHRASINGS:
        for template in phrasing.attribute + phrasing.entity:
            only = dataclasses.replace(phrasing, attribute=(template,) if template in phrasing.attribute else (),
                                       entity=(template,) if template in phrasing.entity else ())
            assert set(texts) & all_captions_of([only]), template


def test_knowledge_graph_covers_every_entity(world: Path) -> None:
    assert len(ENTITIES) >= 150
    # enough seen examples of every look to learn the map from vector to look
    seen_per_pair = Counter((e.colour, e.shape) for e in seen_entities())
    assert len(seen_per_pair) == len(COLOURS) * len(SHAPES) and min(seen_per_pair.values()) >= 4
    triples = _rows(world / "triples.tsv")
    assert all(len(t) == 3 for t in triples)
    id_lines = _rows(world / "entity2id.txt")
    assert int(id_lines[0][0]) == len(id_lines) - 1
    ids = {name: int(i) for name, i in id_lines[1:]}
    assert sorted(ids.values()) == list(range(len(ids)))
    assert {h for h, _, _ in triples} | {t for _, _, t in triples} == set(ids)
    for entity in ENTITIES:
        assert entity.name in ids
        colours = [t for h, r, t in triples if h == entity.name and r == "颜色"]
        shapes = [t for h, r, t in triples if h == entity.name and r == "形状"]
        assert colours == [entity.colour] and shapes == [entity.shape]
    for word in [c.name for c in COLOURS + BACKGROUNDS] + [s.name for s in SHAPES]:
        assert word in ids
    relation_lines = _rows(world / "relation2id.txt")
    assert int(relation_lines[0][0]) == len(relation_lines) - 1
    assert {r for _, r, _ in triples} == {name for name, _ in relation_lines[1:]}


def test_manifest_matches_tables(world: Path) -> None:
    manifest = json.loads((world / "entities.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in manifest["colours"]] == [c.name for c in COLOURS]
    assert all(len(c["rgb"]) == 3 for c in manifest["colours"] + manifest["backgrounds"])
    assert [e["name"] for e in manifest["entities"]] == [e.name for e in ENTITIES]
    assert sum(e["held_out"] for e in manifest["entities"]) == len(held_out_entities())
    assert manifest["counts"]["n_train"] == N_TRAIN
    assert manifest["held_out"] == [e.name for e in held_out_entities()]


def test_training_images_show_what_captions_say(world: Path) -> None:
    rows = _rows(world / "train.tsv")
    correct = 0
    for _, text, b64 in rows:
        read = read_attributes(decode_base64_image(b64))
        correct += (read.colour, read.shape) == _expected_attributes(text)
    assert correct / len(rows) >= 0.99


def test_templates_name_colour_and_shape_or_entity() -> None:
    for phrasing in PHRASINGS:
        assert phrasing.attribute and phrasing.entity, phrasing.name
        for template in phrasing.attribute:
            assert "{colour}" in template and ("{shape}" in template or "{short}" in template)
            assert "{entity}" not in template
        for template in phrasing.entity:
            assert "{entity}" in template and "{colour}" not in template and "{shape}" not in template


def _reader_accuracy(degrade) -> float:
    rng = np.random.default_rng(READER_SEED)
    correct = 0
    for i in range(READER_SAMPLES):
        colour = COLOURS[i % len(COLOURS)].name
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)].name
        read = read_attributes(degrade(render_scene(random_scene(rng, colour, shape))))
        correct += (read.colour, read.shape) == (colour, shape)
    return correct / READER_SAMPLES


def _blur_jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(1)).save(buffer, format="JPEG", quality=50)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def test_reader_on_clean_renders() -> None:
    assert _reader_accuracy(lambda image: image) >= 0.99


def test_reader_on_blurred_renders() -> None:
    assert _reader_accuracy(lambda image: image.filter(ImageFilter.GaussianBlur(1))) >= 0.99


def test_reader_on_blurred_jpeg_renders() -> None:
    assert _reader_accuracy(_blur_jpeg) >= BLUR_JPEG_MIN_ACCURACY


def test_reader_accepts_arrays_and_reports_confidence() -> None:
    image = render("蓝色", "三角形", "灰色", (30.0, 34.0), 40.0)
    from_pil = read_attributes(image)
    from_array = read_attributes(np.asarray(image))
    assert (from_pil.colour, from_pil.shape) == ("蓝色", "三角形")
    assert from_array == from_pil
    assert from_pil.confidence is not None and 0.5 < from_pil.confidence <= 1.0


def test_reader_finds_no_shape_where_there_is_none() -> None:
    blank = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[0].rgb)
    assert read_attributes(blank).shape is None and read_attributes(blank).colour is None
    noise = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
    assert read_attributes(noise).shape is None


def test_render_validates_names_and_draws_missing_layout() -> None:
    with pytest.raises(ValueError):
        render("粉色", "圆形", "白色", (32.0, 32.0), 30.0)
    with pytest.raises(ValueError):
        render("红色", "圆形")
    a = render("红色", "星形", rng=np.random.default_rng(5))
    b = render("红色", "星形", rng=np.random.default_rng(5))
    assert a.tobytes() == b.tobytes() and a.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_cli_writes_the_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--n_train", "5", "--n_valid", "2", "--n_test_prompts", "3"]) == 0
    assert "5 train" in capsys.readouterr().out
    assert all((tmp_path / name).exists() for name in FILES)
    assert len(_rows(tmp_path / "train.tsv")) == 5


def test_parse_prompt_reads_every_prompt_of_the_world(world: Path) -> None:
    for prompt in eval_prompts():
        assert parse_prompt(prompt.prompt) == dataclasses.replace(prompt, family="")
    for _, text in _rows(world / "test.tsv"):
        assert parse_prompt(text) is not None, text
    for caption in all_attribute_captions():
        parsed = parse_prompt(caption)
        assert parsed is not None and parsed.kind == "attribute", caption
    assert parse_prompt("一只猫") is None
    assert parse_prompt("番茄和柠檬") is None


def test_scoring_ground_truth_and_wrong_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(READER_SEED)
    prompts = eval_prompts()[::5]  # every kind, every family
    assert {p.kind for p in prompts} == set(EVAL_KINDS) and {p.family for p in prompts} == {f.name for f in PHRASINGS}
    truth = [(p.prompt, render(p.colour, p.shape, rng=rng)) for p in prompts]
    scores, scored = score_images(truth)
    assert len(scored) == len(prompts)
    assert all(s.n > 0 and s.rates()["both"] >= 0.99 for s in scores.values())
    wrong = [(p.prompt, render("红色" if p.colour != "红色" else "蓝色", p.shape, rng=rng)) for p in prompts]
    wrong_scores, _ = score_images(wrong)
    assert all(s.rates()["colour"] <= 0.01 and s.rates()["shape"] >= 0.99 for s in wrong_scores.values())

    table = tmp_path / "pred.tsv"
    table.write_text("".join(f"{i}\t{text}\t{png_base64(image)}\n" for i, (text, image) in enumerate(truth)))
    rows_path = tmp_path / "rows.tsv"
    assert evaluate_main([str(table), "--rows", str(rows_path)]) == 0
    out = capsys.readouterr().out
    assert "heldout_entity" in out and "1.000" in out
    assert len(_rows(rows_path)) == len(prompts) + 1


def test_reader_downsamples_large_images() -> None:
    image = render("紫色", "星形", "黑色", (32.0, 32.0), 40.0)
    large = image.resize((4 * IMAGE_SIZE, 4 * IMAGE_SIZE), Image.Resampling.BICUBIC)
    read = read_attributes(large)
    assert (read.colour, read.shape) == ("紫色", "星形")


def test_ablation_sampling_settings_parse_and_reject_unknown_keys() -> None:
    import argparse

    from examples.shapes.ablation import describe, explicit, parse_sampling

    assert parse_sampling("guidance_scale=2,top_p=0.9") == {"guidance_scale": 2.0, "top_p": 0.9}
    assert parse_sampling("top_k=8 temperature=0.8") == {"top_k": 8, "temperature": 0.8}
    assert describe(parse_sampling("")) == "plain sampling"
    # measured settings never fall back to a checkpoint's own defaults
    assert explicit({"top_p": 0.9}) == {"top_k": 0, "top_p": 0.9, "temperature": 1.0, "guidance_scale": 1.0,
                                        "method": "sequential", "jacobi_window": 16, "weights": "model"}
    with pytest.raises(argparse.ArgumentTypeError, match="topp=0.9"):
        parse_sampling("topp=0.9")
    with pytest.raises(ValueError):
        parse_sampling("top_k=eight")


def test_ablation_report_tables_by_family_and_held_out_entity() -> None:
    import argparse

    from examples.shapes.ablation import Tally, report

    samples = 4
    held = held_out_entities()[:2]
    held_family = next(p for p in PHRASINGS if p.held_out)
    prompts = [
        EvalPrompt("attribute", "一个红色的圆形", "红色", "圆形", "template"),
        EvalPrompt("attribute", "红色圆形", "红色", "圆形", "short"),
        EvalPrompt("attribute", "桌上放着一颗红色的圆形", "红色", "圆形", held_family.name),
        EvalPrompt("heldout_entity", f"一个{held[0].name}", held[0].colour, held[0].shape, "template"),
        EvalPrompt("heldout_entity", f"{held[0].name}", held[0].colour, held[0].shape, "short"),
        EvalPrompt("heldout_entity", f"一个{held[1].name}", held[1].colour, held[1].shape, "template"),
    ]
    knowledge = Tally(prompts, [4, 3, 2, 4, 2, 1])
    plain = Tally(prompts, [4, 1, 0, 0, 0, 1])
    args = argparse.Namespace(samples=samples, seed=0, knowledge="K", plain="P")
    text = report({"knowledge": knowledge, "plain": plain}, (10, 10), args, {"top_p": 0.9})
    lines = text.splitlines()

    def row(label: str) -> list[str]:
        (line,) = [x for x in lines if x.startswith(f"| {label} |")]
        return [c.strip() for c in line.strip("|").split("|")]

    # per kind over all families: attribute 9/12 vs 5/12
    assert row("attribute")[1] == "3 × 4" and row("attribute")[2].startswith(f"{100 * 9 / 12:.1f}%")
    assert row("attribute")[3].startswith(f"{100 * 5 / 12:.1f}%")
    assert row("attribute")[4].startswith(f"{100 * 4 / 12:+.1f}")
    # per family, the held-out family is marked
    assert row(f"attribute, {held_family.name} (held out)")[2].startswith(f"{100 * 2 / 4:.1f}%")
    assert row("attribute, short")[2].startswith(f"{100 * 3 / 4:.1f}%")
    assert row("heldout_entity, template")[2].startswith(f"{100 * 5 / 8:.1f}%")
    # per held-out entity, all families together: the first 6/8, the second 1/4
    assert row(held[0].name)[1] == "2 × 4" and row(held[0].name)[2].startswith("75.0%")
    assert row(held[1].name)[2].startswith("25.0%") and row(held[1].name)[3].startswith("25.0%")
    assert not any(x.startswith("| seen_entity") for x in lines)  # no prompts of that kind, no row
