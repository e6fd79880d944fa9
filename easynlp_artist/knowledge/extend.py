"""Teach a trained model new entities from their facts: no images, no training of the model.

Each new entity gets a vector in the trained TransE space: the minimiser of the TransE objective over
its triples, every trained vector (entities and relations) frozen — by default the training's own
objective, the margin ranking loss against the triples with their known end replaced by every other
entity (``objective="margin"``), else the triples' distances alone. With the distance
``d(h, r, t) = ‖h + r − t‖_p`` of the store's :class:`~.relations.RelationSpace` (our TransE training:
L1, not squared, entity vectors of unit length), a triple ``(e, r, t)`` pulls ``e`` towards ``t − r``
and ``(h, r, e)`` towards ``h + r``. The solution is found in two steps:

1. start: the coordinate-wise median of those targets (the exact unconstrained minimiser for L1;
   the mean for squared L2, the geometric median for L2), entity by entity, new entities that only
   reach other new ones taking their neighbours' starts;
2. refine: descent with backtracking on the joint objective (start and refinement of the distances
   alone are what the tests check against brute force) of every new entity (entities of one
   batch may reference each other), its kinks smoothed and the smoothing shrunk to zero step by
   step, projected onto the unit sphere when the space keeps entity vectors there; the best point
   is kept, so the result is never worse than the start.

Triples: ``head<TAB>relation<TAB>tail``; the heads not known to the model are the new entities. A
tail must be known or one of the new heads; the relation must be known; a triple between two known
entities teaches nothing (its head is already an entity: remove it first to redefine it). Each such
mistake is an error naming the triple's file and line.

CLI::

    python -m easynlp_artist.knowledge.extend --model NAME_OR_DIR --triples new.tsv --output_dir my-model
    python -m easynlp_artist.knowledge.extend --model DIR --fit_relations graph.tsv --output_dir DIR

``--fit_relations`` serves stores trained before relations were stored with them (the embedded
model's): it writes only ``relations.safetensors`` + ``relation_names.txt`` into ``--output_dir``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from modelzoo.errors import ModelZooError

from .entities import EntityStore
from .errors import KnowledgeFileError
from .lattice import LatticeBuilder
from .relations import RelationSpace
from .transe import read_triples

if TYPE_CHECKING:
    from easynlp_artist.pipeline import ArtistPipeline

logger = logging.getLogger(__name__)

Triple = tuple[str, str, str]
REFINE_STEPS = 200  # descent steps per smoothing level
SMOOTHING = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 0.0)  # the last level: the exact objective
MARGIN = 1.0  # PyKEEN's margin ranking loss, which our TransE training used
OBJECTIVES = ("margin", "distance")
RESTARTS, RESTART_SPREAD = 8, 0.7  # extra starts for the margin objective, drawn from a fixed seed
LIST_SOURCE = "<triples>"  # the "file" named in errors for triples given as a list


@dataclass(frozen=True)
class Fact:
    head: str
    relation: str
    tail: str
    path: str
    line: int

    def error(self, message: str) -> KnowledgeFileError:
        return KnowledgeFileError(f"{self.head}\t{self.relation}\t{self.tail}: {message}", self.path, self.line)


def read_facts(triples: str | os.PathLike | Sequence[Triple], skip_first_line: bool = False) -> list[Fact]:
    """Triples from a file (with their lines) or a list (line = position, 1-based)."""
    if isinstance(triples, (str, os.PathLike)):
        path = os.fspath(triples)
        first = 2 if skip_first_line else 1
        return [Fact(h, r, t, path, first + i) for i, (h, r, t) in enumerate(read_triples(path, skip_first_line))]
    facts = []
    for i, triple in enumerate(triples, 1):
        if len(triple) != 3 or not all(isinstance(x, str) and x.strip() for x in triple):
            raise KnowledgeFileError("expected (head, relation, tail), three non-empty strings", LIST_SOURCE, i)
        facts.append(Fact(triple[0].strip(), triple[1].strip(), triple[2].strip(), LIST_SOURCE, i))
    if not facts:
        raise KnowledgeFileError("no triples", LIST_SOURCE)
    return facts


def _distance(residual: torch.Tensor, space: RelationSpace, smooth: float = 0.0) -> torch.Tensor:
    """Per-row TransE distance of residuals (n, D); ``smooth`` > 0 rounds off its kinks
    (``|x|`` → ``sqrt(x² + smooth²)``), for the refinement's descent."""
    if space.scoring_norm == 1:
        return (residual * residual + smooth * smooth).sqrt().sum(-1) if smooth else residual.abs().sum(-1)
    squared = (residual * residual).sum(-1)
    return squared if space.squared else (squared + max(smooth, 1e-12) ** 2).sqrt()


def _centre(targets: torch.Tensor, space: RelationSpace) -> torch.Tensor:
    """The unconstrained minimiser of Σ d(e − target_i): median (L1), mean (squared L2), geometric
    median (L2, Weiszfeld)."""
    if space.scoring_norm == 1:
        return targets.median(dim=0).values if targets.shape[0] % 2 else targets.sort(dim=0).values[
            targets.shape[0] // 2 - 1 : targets.shape[0] // 2 + 1].mean(0)
    centre = targets.mean(0)
    if space.squared:
        return centre
    for _ in range(100):
        w = 1.0 / (targets - centre).norm(dim=-1).clamp_min(1e-9)
        centre = (w[:, None] * targets).sum(0) / w.sum()
    return centre


def _project(vectors: torch.Tensor, space: RelationSpace) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors, dim=-1) if space.entity_norm == "unit" else vectors


def derive_vectors(store: EntityStore, facts: Sequence[Fact], objective: str = "margin") -> dict[str, torch.Tensor]:
    """Vectors ``(D,)`` for the new entities of ``facts`` (the unknown heads), everything trained frozen.

    ``objective="margin"``: what our TransE training minimised (PyKEEN's margin ranking loss, margin
    1): each triple must score better by the margin than the same triple with its known end replaced
    by any other entity of the store, so the vector tells the entity's colour from the other colours.
    ``"distance"``: only the triples' own distances (their geometric centre)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    space = store.relations
    if space is None:
        raise ValueError(f"{store.source or 'this entity store'}: no relation vectors are stored with it, so new "
                         "entities cannot be placed in its TransE space (train it with python -m "
                         "easynlp_artist.knowledge.transe, or recover them with --fit_relations GRAPH.tsv)")
    known = set(store.names)
    new = list(dict.fromkeys(f.head for f in facts if f.head not in known))
    is_new = set(new)
    for f in facts:
        if f.relation not in space:
            raise f.error(f"unknown relation {f.relation!r} (known: {', '.join(space.names)})")
        if f.tail not in known and f.tail not in is_new:
            raise f.error(f"unknown neighbour {f.tail!r}: neither an entity of the model nor a new head here")
        if f.head in known and f.tail in known:
            raise f.error(f"{f.head!r} is already an entity of the model (remove it first to redefine it)")
        if f.head == f.tail:
            raise f.error("a triple from an entity to itself")

    def vec(name: str) -> torch.Tensor:
        return store.vectors_for([store.id_of(name)])[0]

    # 1. starts, from known neighbours first, then from new ones already started
    start: dict[str, torch.Tensor] = {}
    while len(start) < len(new):
        progress = False
        for name in new:
            if name in start:
                continue
            targets = []
            for f in facts:
                r = space.vector(f.relation)
                if f.head == name and (f.tail in known or f.tail in start):
                    targets.append((vec(f.tail) if f.tail in known else start[f.tail]) - r)
                elif f.tail == name and (f.head in known or f.head in start):
                    targets.append((vec(f.head) if f.head in known else start[f.head]) + r)
            if targets:
                start[name] = _project(_centre(torch.stack(targets), space), space)
                progress = True
        if not progress:
            lost = next(n for n in new if n not in start)
            raise next(f for f in facts if lost in (f.head, f.tail)).error(
                f"{lost!r} is linked to no entity of the model, not even through other new entities")

    # 2. refine all new entities jointly on Σ d(h + r − t)
    index = {n: i for i, n in enumerate(new)}
    heads = torch.stack([vec(f.head) if f.head in known else torch.zeros(store.dim) for f in facts])
    tails = torch.stack([vec(f.tail) if f.tail in known else torch.zeros(store.dim) for f in facts])
    rels = torch.stack([space.vector(f.relation) for f in facts])
    head_new = torch.tensor([index.get(f.head, -1) for f in facts])
    tail_new = torch.tensor([index.get(f.tail, -1) for f in facts])

    # negatives: every other named entity of the store in place of a triple's known end
    others = store.vectors_for(store.ids)  # (M, D)
    known_end = torch.tensor([store.id_of(f.tail) if f.tail in known else store.id_of(f.head) if f.head in known else -1
                              for f in facts])
    is_other = torch.tensor(store.ids)[None, :] != known_end[:, None]  # (F, M): not the true neighbour
    corrupt_tail = (tail_new < 0)[:, None, None]  # (F, 1, 1): the known end is the tail (else the head)

    def loss(e: torch.Tensor, smooth: float = 0.0) -> torch.Tensor:
        h = torch.where((head_new >= 0)[:, None], e[head_new.clamp_min(0)], heads)
        t = torch.where((tail_new >= 0)[:, None], e[tail_new.clamp_min(0)], tails)
        positive = _distance(h + rels - t, space, smooth)  # (F,)
        if objective == "distance":
            return positive.sum()
        # (F, M, D): h + r − t with the known end swapped for each other entity
        swapped = torch.where(corrupt_tail, (h + rels)[:, None, :] - others[None], others[None] + (rels - t)[:, None, :])
        negative = _distance(swapped, space, smooth)  # (F, M)
        margins = torch.relu(MARGIN + positive[:, None] - negative) * is_other
        per_fact = margins.sum(1) / is_other.sum(1).clamp_min(1)
        both_new = known_end < 0  # no known end to swap: the distance itself
        return torch.where(both_new, positive, per_fact).sum()

    first = torch.stack([start[n] for n in new])
    starts = [first]
    if objective == "margin":  # not convex: a few more starts around the centre, the best end kept
        g = torch.Generator().manual_seed(0)
        starts += [_project(first + RESTART_SPREAD * torch.randn(first.shape, generator=g), space)
                   for _ in range(RESTARTS)]
    ends = [_refine(x, loss, space) for x in starts]
    best = min(ends, key=lambda x: float(loss(x)))
    return {n: v for n, v in zip(new, best)}


def _refine(e: torch.Tensor, objective, space: RelationSpace) -> torch.Tensor:
    """Descent with backtracking on the objective made smooth, the smoothing shrunk step by step
    (continuation), projected onto the sphere when entities live there; the best point by the
    exact objective is returned, so never a worse one than the start."""
    best, best_value = e.clone(), float(objective(e))
    step = 0.1
    for smooth in SMOOTHING:
        for _ in range(REFINE_STEPS):
            x = e.clone().requires_grad_(True)
            value = objective(x, smooth)
            (grad,) = torch.autograd.grad(value, x)
            with torch.no_grad():
                norm = grad.norm()
                if norm < 1e-12:
                    break
                trial = _project(e - step * grad / norm, space)
                if float(objective(trial, smooth)) < float(value):
                    e, step = trial, step * 1.5
                else:
                    step *= 0.5
                    if step < 1e-9:
                        step = 1e-3
                        break
            exact = float(objective(e))
            if exact < best_value:
                best, best_value = e.clone(), exact
    return best



def add_to_store(store: EntityStore, vectors: dict[str, torch.Tensor]) -> EntityStore:
    """A new store: the old names and vectors, then the new entities as new rows."""
    first = store.num_vectors
    table = torch.cat([store.vectors, torch.stack(list(vectors.values()))]) if vectors else store.vectors
    return EntityStore(store.names + list(vectors), store.ids + list(range(first, first + len(vectors))), table,
                       source=store.source, relations=store.relations)


def _swap_store(pipe: ArtistPipeline, store: EntityStore) -> None:
    # a new store and a new matcher, each swapped in whole: a prompt encoded meanwhile sees one or the other
    lattice = LatticeBuilder(store, pipe.tokenizer, pipe.lattice.config)
    pipe.entities = store
    pipe.lattice = lattice


def _editable(pipe: ArtistPipeline) -> EntityStore:
    if pipe.lattice is None or pipe.entities is None:
        raise ValueError("this model has no knowledge part (no entity store): it cannot learn entities")
    return pipe.entities


def add_entities(pipe: ArtistPipeline, triples, *, skip_first_line: bool = False) -> list[str]:
    """Derive vectors for the new entities of ``triples`` (a path or a list of tuples) and put them in
    ``pipe``'s entity store and matcher; returns the new names in order."""
    store = _editable(pipe)
    vectors = derive_vectors(store, read_facts(triples, skip_first_line))
    _swap_store(pipe, add_to_store(store, vectors))
    return list(vectors)


def remove_entities(pipe: ArtistPipeline, names: Sequence[str]) -> None:
    """Forget entities by name (their vector rows stay, unnamed, so other ids do not move)."""
    store = _editable(pipe)
    known = set(store.names)
    for name in names:
        if name not in known:
            raise KeyError(f"{name!r} is not an entity of the model")
    drop = set(names)
    kept = [(n, i) for n, i in store.items() if n not in drop]
    _swap_store(pipe, EntityStore([n for n, _ in kept], [i for _, i in kept], store.vectors, source=store.source,
                                  relations=store.relations))


def fit_relations(store: EntityStore, facts: Sequence[Fact], scoring_norm: int = 1, squared: bool = False,
                  entity_norm: str = "unit") -> RelationSpace:
    """Relation vectors for a store that has none, from the graph it was trained on: for each relation
    the minimiser of Σ d(h + r − t) over its triples with the entity vectors frozen (exact: the median
    of ``t − h`` for L1, its mean for squared L2, the geometric median for L2)."""
    space = RelationSpace([], torch.zeros(0, store.dim), scoring_norm, squared, entity_norm)
    known = set(store.names)
    diffs: dict[str, list[torch.Tensor]] = {}
    for f in facts:
        for name in (f.head, f.tail):
            if name not in known:
                raise f.error(f"{name!r} is not an entity of the store")
        pair = store.vectors_for([store.id_of(f.head), store.id_of(f.tail)])
        diffs.setdefault(f.relation, []).append(pair[1] - pair[0])
    names = list(diffs)
    vectors = torch.stack([_centre(torch.stack(diffs[n]), space) for n in names])
    return RelationSpace(names, vectors, scoring_norm, squared, entity_norm)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m easynlp_artist.knowledge.extend", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a ModelZoo name, a checkpoint folder or a URI")
    p.add_argument("--output_dir", required=True, help="where the complete extended checkpoint is written")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--triples", help="head<TAB>relation<TAB>tail facts of the new entities")
    what.add_argument("--fit_relations", metavar="GRAPH",
                      help="the triples the store was trained on: store its relation vectors (entities frozen)")
    p.add_argument("--skip_first_line", action="store_true", help="the triples file has a header line")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from easynlp_artist.pipeline import ArtistPipeline

        pipe = ArtistPipeline.from_pretrained(args.model)
        store = _editable(pipe)
        if args.fit_relations:  # only the relation files are written (beside the model's own, if it is there)
            relations = fit_relations(store, read_facts(args.fit_relations, args.skip_first_line))
            relations.save(args.output_dir)
            print(f"stored {len(relations.names)} relation vectors ({relations.describe()})")
        else:
            added = add_entities(pipe, args.triples, skip_first_line=args.skip_first_line)
            print(f"added {len(added)} entities: {', '.join(added)}")
            pipe.save_pretrained(args.output_dir)
    except (OSError, ValueError, KeyError, ModelZooError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
