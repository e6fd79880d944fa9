"""Entity vectors: TransE trained with PyKEEN on a triples table, written in both entity formats.

Input: tab-separated UTF-8 ``head<TAB>relation<TAB>tail`` per line (``skip_first_line`` for a header).
A share ``test_ratio`` of the triples is held out (PyKEEN's split keeps every entity in the training
part) and used for filtered link prediction: MRR and Hits@10 over head and tail prediction, reported
next to the expectation of a uniformly random ranking over the N entities (MRR ``H_N / N``, Hits@10
``10 / N``). Output directory: ``entity2id.txt`` + ``entity2vec.pt`` (EasyNLP format) and
``entities.safetensors`` + ``entity_names.txt`` (ours), see :mod:`.entities`, the relation vectors and
the score settings in both formats (:mod:`.relations`: what adding entities later needs, see
:mod:`.extend`), plus ``metrics.json``.
Entity ids are PyKEEN's (entity names in sorted order). Everything runs locally: nothing is downloaded.

CLI::

    python -m easynlp_artist.knowledge.transe --triples triples.tsv --output_dir entities/ --dim 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from modelzoo.errors import ModelZooError
from modelzoo.extras import require
from modelzoo.files import atomic_path

from .entities import EntityStore
from .errors import KnowledgeFileError
from .relations import RelationSpace

METRICS_FILE = "metrics.json"
OPTION_HELP = {  # the command's options for TransEConfig's fields
    "dim": "length of the entity and relation vectors",
    "epochs": "passes over the training triples",
    "learning_rate": "Adam's learning rate",
    "batch_size": "triples per training step",
    "num_negatives": "corrupted triples per true one (the margin ranking loss compares them)",
    "test_ratio": "share of the triples held out to measure link prediction (MRR, Hits@10)",
    "seed": "seed of the split, the initialisation and the negative sampling",
}


@dataclass
class TransEConfig:
    dim: int = 100
    epochs: int = 100
    learning_rate: float = 0.01
    batch_size: int = 256
    num_negatives: int = 1  # negative samples per positive triple
    test_ratio: float = 0.1  # share of triples held out for link prediction
    seed: int = 0
    # after measuring on the held-out split, train again on every triple and return those vectors
    # (a fact held out for the metrics is then not missing from the entity's vector)
    refit_on_all: bool = False

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.epochs <= 0 or self.batch_size <= 0 or self.num_negatives <= 0:
            raise ValueError("dim, epochs, batch_size and num_negatives must be positive")
        if not 0.0 < self.test_ratio < 1.0:
            raise ValueError(f"test_ratio must be in (0, 1), got {self.test_ratio}")


@dataclass
class TransEMetrics:
    num_entities: int
    num_relations: int
    num_train: int
    num_test: int
    mrr: float  # filtered, both sides, realistic ranks
    hits_at_10: float
    random_mrr: float  # expectation under a uniformly random ranking of the entities
    random_hits_at_10: float


def read_triples(path: str | os.PathLike, skip_first_line: bool = False) -> list[tuple[str, str, str]]:
    """``(head, relation, tail)`` rows; malformed lines raise :class:`KnowledgeFileError` with line/column."""
    path = os.fspath(path)
    triples = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if skip_first_line and lineno == 1:
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise KnowledgeFileError(f"invalid UTF-8 at byte {e.start + 1} ({e.reason})", path, lineno) from e
            fields = line.split("\t")
            if len(fields) != 3:
                raise KnowledgeFileError(f"expected 'head<TAB>relation<TAB>tail', found {len(fields)} field(s)", path, lineno, 1)
            column = 1
            for name, value in zip(("head", "relation", "tail"), fields):
                if not value.strip():
                    raise KnowledgeFileError(f"empty {name}", path, lineno, column)
                column += len(value) + 1
            triples.append((fields[0].strip(), fields[1].strip(), fields[2].strip()))
    if not triples:
        raise KnowledgeFileError("no triples", path)
    return triples


def random_ranking_metrics(num_entities: int, k: int = 10) -> tuple[float, float]:
    """Expected MRR and Hits@k when the true entity's rank is uniform over ``1..num_entities``."""
    mrr = sum(1.0 / r for r in range(1, num_entities + 1)) / num_entities
    return mrr, min(k, num_entities) / num_entities


@contextlib.contextmanager
def _quiet_pykeen():
    """PyKEEN on CPU says what does not apply here: torch's pin_memory warning (no accelerator),
    torch_max_mem's "only cuda is considered safe", its evaluator's timings. Real errors still raise."""
    loggers = [logging.getLogger(name) for name in ("pykeen", "torch_max_mem")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true", category=UserWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def train_transe(
    triples: Sequence[tuple[str, str, str]], config: TransEConfig | None = None
) -> tuple[EntityStore, TransEMetrics]:
    """Train TransE on labelled triples; returns the entity store (names, ids, vectors) and held-out metrics."""
    require("pykeen", "transe", "TransE training (python -m easynlp_artist.knowledge.transe)")
    from pykeen.pipeline import pipeline  # heavy import, only needed here
    from pykeen.triples import TriplesFactory

    cfg = config or TransEConfig()
    factory = TriplesFactory.from_labeled_triples(np.asarray(triples, dtype=str))
    train, test = factory.split([1.0 - cfg.test_ratio, cfg.test_ratio], random_state=cfg.seed)

    def fit(training, testing):
        return pipeline(
            training=training,
            testing=testing,
            model="TransE",
            model_kwargs={"embedding_dim": cfg.dim, "scoring_fct_norm": 1},  # L1, as RelationSpace says below
            optimizer="Adam",
            optimizer_kwargs={"lr": cfg.learning_rate},
            training_loop="sLCWA",
            negative_sampler_kwargs={"num_negs_per_pos": cfg.num_negatives},
            training_kwargs={"num_epochs": cfg.epochs, "batch_size": cfg.batch_size, "use_tqdm": False},
            evaluation_kwargs={"use_tqdm": False, "batch_size": cfg.batch_size},
            random_seed=cfg.seed,
            device="cpu",
        )

    with _quiet_pykeen():
        result = fit(train, test)
        final = fit(factory, test) if cfg.refit_on_all else result
    metrics = result.metric_results
    with torch.no_grad():
        vectors = final.model.entity_representations[0](indices=None).detach().cpu().float()  # (N, D)
        relation_vectors = final.model.relation_representations[0](indices=None).detach().cpu().float()  # (R, D)
    names = sorted(factory.entity_to_id, key=factory.entity_to_id.__getitem__)
    relation_names = sorted(factory.relation_to_id, key=factory.relation_to_id.__getitem__)
    # PyKEEN's TransE defaults, which fit() keeps: L1 distance, not squared; unit-length entity vectors
    relations = RelationSpace(relation_names, relation_vectors, scoring_norm=1, squared=False, entity_norm="unit")
    store = EntityStore(names, [factory.entity_to_id[n] for n in names], vectors, source="transe", relations=relations)
    random_mrr, random_hits = random_ranking_metrics(factory.num_entities)
    return store, TransEMetrics(
        num_entities=factory.num_entities,
        num_relations=factory.num_relations,
        num_train=train.num_triples,
        num_test=test.num_triples,
        mrr=float(metrics.get_metric("both.realistic.inverse_harmonic_mean_rank")),
        hits_at_10=float(metrics.get_metric("both.realistic.hits_at_10")),
        random_mrr=random_mrr,
        random_hits_at_10=random_hits,
    )


def train_transe_files(
    triples_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TransEConfig | None = None,
    skip_first_line: bool = False,
) -> TransEMetrics:
    """Read a triples table, train, write both entity formats and ``metrics.json`` into ``out_dir``."""
    store, metrics = train_transe(read_triples(triples_path, skip_first_line), config)
    store.save_easynlp(out_dir)
    store.save(out_dir)
    with atomic_path(os.path.join(out_dir, METRICS_FILE)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(metrics), f, indent=2)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m easynlp_artist.knowledge.transe",
        description="Train TransE entity vectors (PyKEEN) from head<TAB>relation<TAB>tail triples.",
    )
    p.add_argument("--triples", required=True, help="head<TAB>relation<TAB>tail per line, UTF-8")
    p.add_argument("--output_dir", required=True, help="where both entity formats and metrics.json are written")
    p.add_argument("--skip_first_line", action="store_true", help="the table has a header line")
    defaults = TransEConfig()
    for name, meaning in OPTION_HELP.items():
        default = getattr(defaults, name)
        p.add_argument(f"--{name}", type=type(default), default=default, help=f"{meaning} (default: %(default)s)")
    p.add_argument("--refit_on_all", action="store_true",
                   help="write vectors trained on every triple (the metrics still come from the held-out split)")
    args = p.parse_args(argv)
    try:
        config = TransEConfig(
            dim=args.dim, epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
            num_negatives=args.num_negatives, test_ratio=args.test_ratio, seed=args.seed,
            refit_on_all=args.refit_on_all,
        )
        metrics = train_transe_files(args.triples, args.output_dir, config, args.skip_first_line)
    except (OSError, ValueError, ModelZooError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(metrics), indent=2))
    if metrics.mrr <= metrics.random_mrr:
        print(f"warning: the held-out MRR {metrics.mrr:.3f} is not above a random ranking's {metrics.random_mrr:.3f} "
              f"({metrics.num_entities} entities): the vectors have not learnt the graph; train longer (--epochs), "
              f"or check that the test triples' entities and relations also occur in training", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
