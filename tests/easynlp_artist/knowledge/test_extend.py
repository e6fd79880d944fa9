"""Adding entities to a trained store (`knowledge.extend`): the derived vectors against brute-force
minimisation, against trained TransE vectors, through the pipeline (matcher, fusion, save/load),
the command line, and every mistake named with its file and line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny import randomize_, tiny_artist_config

from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.errors import KnowledgeFileError
from easynlp_artist.knowledge.extend import Fact, derive_vectors, fit_relations, main, read_facts
from easynlp_artist.knowledge.relations import RelationSpace
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import char_vocab, load_tokenizer, write_vocab


def _store(dim: int, norm: int = 1, squared: bool = False, entity_norm: str = "unit", seed: int = 0) -> EntityStore:
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(3, dim, generator=g)
    if entity_norm == "unit":
        vectors = F.normalize(vectors, dim=-1)
    relations = RelationSpace(["r1", "r2"], torch.randn(2, dim, generator=g), norm, squared, entity_norm)
    return EntityStore(["A", "B", "C"], [0, 1, 2], vectors, relations=relations)


def _facts(rows):
    return [Fact(h, r, t, "t.tsv", i + 1) for i, (h, r, t) in enumerate(rows)]


X_FACTS = [("X", "r1", "A"), ("X", "r2", "B"), ("C", "r1", "X"), ("X", "r2", "C")]


def _objective(store: EntityStore, x: torch.Tensor) -> torch.Tensor:
    """Σ ‖h + r − t‖_p over X_FACTS for candidate vectors x (n, D) of X — written out independently."""
    sp = store.relations
    v = {n: store.vectors_for([store.id_of(n)])[0] for n in store.names}
    total = torch.zeros(x.shape[0])
    for h, r, t in X_FACTS:
        hv = x if h == "X" else v[h].expand_as(x)
        tv = x if t == "X" else v[t].expand_as(x)
        res = hv + sp.vector(r) - tv
        total += res.abs().sum(-1) if sp.scoring_norm == 1 else (res**2).sum(-1) if sp.squared else res.norm(dim=-1)
    return total


@pytest.mark.parametrize("norm, squared", [(1, False), (2, False), (2, True)])
def test_unit_sphere_vector_equals_brute_force_on_the_circle(norm, squared):
    store = _store(2, norm, squared)
    got = derive_vectors(store, _facts(X_FACTS), objective="distance")["X"]
    angles = torch.linspace(0, 2 * math.pi, 200_001)[:-1]
    grid = torch.stack([angles.cos(), angles.sin()], dim=1)
    values = _objective(store, grid)
    assert float(got.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(_objective(store, got[None])) <= float(values.min()) + 1e-4
    best = grid[values.argmin()]
    assert float(torch.dot(got, best)) > math.cos(0.01)  # the same point of the circle


def test_margin_objective_equals_brute_force_on_the_circle():
    """The training's objective: mean over the other entities of relu(1 + d(triple) − d(corrupted))."""
    g = torch.Generator().manual_seed(5)
    names = [f"E{i}" for i in range(8)]
    vectors = F.normalize(torch.randn(8, 2, generator=g), dim=-1)
    relations = RelationSpace(["r1", "r2"], torch.randn(2, 2, generator=g) * 0.5)
    store = EntityStore(names, list(range(8)), vectors, relations=relations)
    rows = [("X", "r1", "E0"), ("X", "r2", "E1"), ("E2", "r1", "X")]
    got = derive_vectors(store, _facts(rows))["X"]

    def objective(x):  # x (n, 2)
        total = torch.zeros(x.shape[0])
        for h, r, t in rows:
            rv = relations.vector(r)
            known = t if h == "X" else h
            pos = ((x + rv - vectors[int(t[1:])]) if h == "X" else (vectors[int(h[1:])] + rv - x)).abs().sum(-1)
            losses = []
            for j, other in enumerate(vectors):
                if names[j] == known:
                    continue
                neg = ((x + rv - other) if h == "X" else (other + rv - x)).abs().sum(-1)
                losses.append(torch.relu(1.0 + pos - neg))
            total += torch.stack(losses).mean(0)
        return total

    angles = torch.linspace(0, 2 * math.pi, 200_001)[:-1]
    values = objective(torch.stack([angles.cos(), angles.sin()], dim=1))
    assert float(objective(got[None])) <= float(values.min()) + 1e-3


def test_unit_sphere_vector_equals_brute_force_on_the_sphere():
    store = _store(3, seed=1)
    got = derive_vectors(store, _facts(X_FACTS), objective="distance")["X"]
    n = 400_000  # a Fibonacci lattice over the sphere (spacing ≈ 0.006)
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (1 + 5**0.5) * k
    grid = torch.stack([(1 - z * z).sqrt() * phi.cos(), (1 - z * z).sqrt() * phi.sin(), z], dim=1).float()
    values = _objective(store, grid)
    assert float(_objective(store, got[None])) <= float(values.min()) + 1e-3


def test_unconstrained_l1_is_the_median_and_squared_l2_a_joint_least_squares():
    store = _store(4, 1, False, "none")
    got = derive_vectors(store, _facts([("X", "r1", "A"), ("X", "r2", "B"), ("X", "r1", "C")]), objective="distance")["X"]
    sp, v = store.relations, store.vectors
    targets = torch.stack([v[0] - sp.vector("r1"), v[1] - sp.vector("r2"), v[2] - sp.vector("r1")])
    torch.testing.assert_close(got, targets.median(dim=0).values, atol=1e-6, rtol=0)

    # two new entities that reference each other: minimise ‖X + r1 − A‖² + ‖Y + r2 − X‖² + ‖Y + r1 − B‖²
    store = _store(4, 2, True, "none")
    sp, v = store.relations, store.vectors
    rows = [("X", "r1", "A"), ("Y", "r2", "X"), ("Y", "r1", "B")]
    got = derive_vectors(store, _facts(rows), objective="distance")
    # the normal equations, per coordinate: [[2, -1], [-1, 2]] [x, y] = [A - r1 - r2 ... ] — solved by lstsq
    a = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]])
    b = torch.stack([v[0] - sp.vector("r1"), -sp.vector("r2"), v[1] - sp.vector("r1")])
    solution = torch.linalg.lstsq(a, b).solution
    torch.testing.assert_close(got["X"], solution[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(got["Y"], solution[1], atol=2e-3, rtol=0)


def test_a_derived_vector_lands_near_the_trained_one(tmp_path):
    from easynlp_artist.knowledge.transe import TransEConfig, train_transe

    rows = []
    for c in range(6):
        for k in range(4):
            rows += [(f"城市{c}_{k}", "located_in", f"国家{c}"), (f"国家{c}", "has_city", f"城市{c}_{k}")]
    store, _ = train_transe(rows, TransEConfig(dim=16, epochs=40, learning_rate=0.05, batch_size=16,
                                               num_negatives=4, test_ratio=0.1, refit_on_all=True))
    assert store.relations is not None and store.relations.names == sorted({"located_in", "has_city"})
    city = "城市2_1"
    trained = store.vectors_for([store.id_of(city)])[0]
    kept = [(n, i) for n, i in store.items() if n != city]
    without = EntityStore([n for n, _ in kept], [i for _, i in kept], store.vectors, relations=store.relations)
    derived = derive_vectors(without, _facts([r for r in rows if city in (r[0], r[2])]))[city]
    # the city is as close to its trained vector as its country's other cities are to each other, or closer
    siblings = store.vectors_for([store.id_of(f"城市2_{k}") for k in (0, 2, 3)])
    assert float(F.cosine_similarity(derived, trained, dim=0)) > 0.5
    assert float(F.cosine_similarity(derived, trained, dim=0)) > float(F.cosine_similarity(trained[None], siblings).min())


def test_fit_relations_recovers_planted_relations():
    g = torch.Generator().manual_seed(3)
    heads, r = torch.randn(9, 5, generator=g), torch.randn(5, generator=g)
    store = EntityStore([f"h{i}" for i in range(9)] + [f"t{i}" for i in range(9)], list(range(18)),
                        torch.cat([heads, heads + r]))
    space = fit_relations(store, _facts([(f"h{i}", "r", f"t{i}") for i in range(9)]), entity_norm="none")
    torch.testing.assert_close(space.vector("r"), r, atol=1e-5, rtol=0)


CHARS = "一个红色的圆形番茄柠檬黄在白背景上水果"


def _pipeline(tmp_path) -> ArtistPipeline:
    vocab = char_vocab(CHARS)
    write_vocab(vocab, tmp_path / "vocab.txt")
    model = randomize_(ArtistModel(tiny_artist_config(len(vocab), entity_dim=4, text_len=8)))
    g = torch.Generator().manual_seed(0)
    store = EntityStore(["番茄", "柠檬", "红色", "圆形", "水果"], list(range(5)), F.normalize(torch.randn(5, 4, generator=g), dim=-1),
                        relations=RelationSpace(["颜色", "形状", "类别"], torch.randn(3, 4, generator=g)))
    return ArtistPipeline(model, load_tokenizer(tmp_path / "vocab.txt"), store)


DRAGON = [("火龙果", "颜色", "红色"), ("火龙果", "形状", "圆形"), ("火龙果", "类别", "水果")]


def test_an_added_entity_outside_the_vocabulary_is_matched_fused_saved_and_removed(tmp_path):
    pipe = _pipeline(tmp_path)
    prompt = ["一个火龙果"]  # 火 and 龙 are not in the vocabulary: [UNK] [UNK] 果
    ids_before, know_before = pipe.encode_prompts(prompt)
    unk = pipe.tokenizer.unk_token_id
    assert ids_before[0, 2:4].tolist() == [unk, unk]
    assert int(know_before.mask.sum()) == 0

    assert pipe.add_entities(DRAGON) == ["火龙果"]
    ids, know = pipe.encode_prompts(prompt)
    assert torch.equal(ids, ids_before) and int(know.mask.sum()) == 1
    assert (int(know.starts[0, 0]), int(know.ends[0, 0])) == (2, 5)  # the lattice covers the [UNK] positions
    vector = pipe.entities.vectors_for([pipe.entities.id_of("火龙果")])[0]
    torch.testing.assert_close(know.vectors[0, 0], vector)
    with torch.no_grad():
        with_entity = pipe.model.gpt.prefill(ids, know, None, None)
        without = pipe.model.gpt.prefill(ids, know_before, None, None)
    assert not torch.allclose(with_entity, without)  # the fused vector changes the image logits

    for layout in (False, True):
        out = pipe.save_pretrained(tmp_path / f"saved-{layout}", original_layout=layout)
        loaded = ArtistPipeline.from_pretrained(out)
        torch.testing.assert_close(loaded.entities.vectors_for([loaded.entities.id_of("火龙果")])[0], vector)
        assert loaded.entities.relations.names == ["颜色", "形状", "类别"]
        assert int(loaded.encode_prompts(prompt)[1].mask.sum()) == 1

    pipe.remove_entities(["火龙果"])
    assert int(pipe.encode_prompts(prompt)[1].mask.sum()) == 0
    with pytest.raises(KeyError, match="火龙果"):
        pipe.remove_entities(["火龙果"])


@pytest.mark.parametrize("text, line, message", [
    ("火龙果\t颜色\t红色\n火龙果\t味道\t甜\n", 2, "unknown relation '味道'"),
    ("火龙果\t颜色\t红色\n火龙果\t类别\t水菓\n", 2, "unknown neighbour '水菓'"),
    ("番茄\t颜色\t红色\n", 1, "'番茄' is already an entity"),
    ("火龙果\t颜色\t蛇果\n蛇果\t形状\t火龙果\n", 1, "linked to no entity of the model"),
])
def test_mistakes_name_the_file_and_line(tmp_path, text, line, message):
    pipe = _pipeline(tmp_path)
    path = tmp_path / "new.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KnowledgeFileError, match=message) as info:
        pipe.add_entities(path)
    assert str(info.value).startswith(f"{path}:{line}:")
    assert "火龙果" not in pipe.entities.names  # nothing was added


def test_a_store_without_relations_says_it_cannot_be_extended(tmp_path):
    pipe = _pipeline(tmp_path)
    pipe.entities.relations = None
    with pytest.raises(ValueError, match="no relation vectors.*fit_relations"):
        pipe.add_entities(DRAGON)


def test_cli_writes_a_complete_extended_checkpoint(tmp_path, capsys):
    src = _pipeline(tmp_path).save_pretrained(tmp_path / "src")
    triples = tmp_path / "new.tsv"
    triples.write_text("".join("\t".join(t) + "\n" for t in DRAGON), encoding="utf-8")
    assert main(["--model", str(src), "--triples", str(triples), "--output_dir", str(tmp_path / "out")]) == 0
    loaded = ArtistPipeline.from_pretrained(tmp_path / "out")
    assert "火龙果" in loaded.entities.names and len(loaded.entities) == 6
    triples.write_text("火龙果\t味道\t甜\n", encoding="utf-8")
    assert main(["--model", str(src), "--triples", str(triples), "--output_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {triples}:1:") and "味道" in err[0]
    assert not (tmp_path / "bad").exists()


def test_read_facts_from_a_list_names_the_position():
    with pytest.raises(KnowledgeFileError, match=r"<triples>:2: expected \(head, relation, tail\)"):
        read_facts([("a", "r", "b"), ("a", "r")])
