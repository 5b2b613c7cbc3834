"""Few-shot episodes: N classes, K support + Q query images each, drawn seeded from labelled unit vectors.

One sampler serves episodic training (edgecls.engine.episodic: image indices per step), its validation,
`eval_utils/eval.py --few-shot` and benchmarks/few_shot.py (vectors embedded once per image, then every
episode is a few matrix products). Nearest prototype: edgecls.embed.prototypes (cosine to the normalised
mean support embedding), the rule the exported prototype ONNX head applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from edgecls.embed.prototypes import compute_prototypes, cosine_scores
from edgecls.errors import UserError

Z95 = 1.96


@dataclass(frozen=True)
class Episode:
    """Indices into the labelled rows; support first, class-major (n_way * k_shot), then the queries
    (n_way * query, class-major); labels are episode-local 0..n_way-1."""

    classes: np.ndarray  # the episode's classes (codes into the class list), n_way
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def rows_by_class(codes: Sequence[int], num_classes: int) -> list[np.ndarray]:
    codes = np.asarray(codes, np.int64)
    return [np.flatnonzero(codes == c) for c in range(num_classes)]


def check_episodes(
    counts: dict[str, int], n_way: int, k_shot: int, query: int, where: str, names=("n_way", "k_shot", "query")
) -> None:
    """A UserError (one line, naming the fields) when these classes cannot give such episodes."""
    n_name, k_name, q_name = names
    if n_way > len(counts):
        raise UserError(f"`{n_name}` {n_way}: {where} has only {len(counts)} classes; lower `{n_name}`")
    need = k_shot + query
    for cls, n in sorted(counts.items()):
        if n < need:
            raise UserError(
                f"class {cls!r} in {where} has {n} images, fewer than `{k_name}` + `{q_name}` = {need}; "
                f"lower them or add images"
            )


def sample_episodes(
    by_class: list[np.ndarray], n_way: int, k_shot: int, query: int, count: int, seed: int
) -> Iterator[Episode]:
    """`count` episodes from one seeded generator: classes without replacement, then k_shot + query distinct
    images of each."""
    rng = np.random.default_rng(seed)
    eligible = np.array([c for c, rows in enumerate(by_class) if len(rows) >= k_shot + query])
    if len(eligible) < n_way:
        raise UserError(f"`n_way` {n_way}: only {len(eligible)} classes have {k_shot + query} images or more")
    for _ in range(count):
        classes = rng.choice(eligible, n_way, replace=False)
        picks = [rng.choice(by_class[c], k_shot + query, replace=False) for c in classes]
        support = np.concatenate([p[:k_shot] for p in picks])
        queries = np.concatenate([p[k_shot:] for p in picks])
        yield Episode(
            classes, support, np.repeat(np.arange(n_way), k_shot), queries, np.repeat(np.arange(n_way), query)
        )


def prototype_scores(support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine of each query to each class prototype (edgecls.embed.prototypes), classes 0..n-1 in order."""
    n = int(support_labels.max()) + 1
    _, protos = compute_prototypes(support, support_labels.tolist(), classes=list(range(n)))
    return cosine_scores(queries, protos)


Classifier = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def episode_accuracies(
    vectors: np.ndarray,
    codes: Sequence[int],
    num_classes: int,
    *,
    n_way: int,
    k_shot: int,
    query: int,
    episodes: int,
    seed: int,
    classifiers: dict[str, Classifier] | None = None,
) -> dict[str, np.ndarray]:
    """{classifier name: per-episode query accuracy}; every classifier sees the same episodes. A classifier
    maps (support vectors, support labels, query vectors) to query x n_way scores (default: the prototypes)."""
    classifiers = classifiers or {"prototype": prototype_scores}
    vectors = np.asarray(vectors, np.float32)
    out = {name: np.empty(episodes, np.float64) for name in classifiers}
    by_class = rows_by_class(codes, num_classes)
    for i, ep in enumerate(sample_episodes(by_class, n_way, k_shot, query, episodes, seed)):
        for name, classify in classifiers.items():
            scores = classify(vectors[ep.support], ep.support_labels, vectors[ep.query])
            out[name][i] = float(np.mean(np.argmax(scores, axis=1) == ep.query_labels))
    return out


def mean_ci95(accuracies: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval): 1.96 * std / sqrt(episodes), std with ddof=0 (numpy's)."""
    a = np.asarray(accuracies, np.float64)
    return float(a.mean()), float(Z95 * a.std() / np.sqrt(len(a)))


def parse_shots(text: str) -> list[int]:
    """The k-shot list: "1,5" -> [1, 5]."""
    import argparse

    try:
        shots = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a comma list of whole numbers such as 1,5") from None
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: each shot count must be at least 1")
    return sorted(set(shots))


def few_shot_report(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    n_way: int,
    shots: Sequence[int],
    query: int,
    episodes: int,
    seed: int,
    where: str,
) -> dict:
    """Nearest-prototype accuracy per k-shot over seeded episodes (seed + k: each k its own episodes)."""
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    codes = [index[lab] for lab in labels]
    counts = {c: codes.count(i) for c, i in index.items()}
    check_episodes(counts, n_way, max(shots), query, where, names=("n_way", "k_shot", "query"))
    rows = []
    for k in shots:
        acc = episode_accuracies(
            vectors, codes, len(classes), n_way=n_way, k_shot=k, query=query, episodes=episodes, seed=seed + k
        )["prototype"]
        mean, ci = mean_ci95(acc)
        rows.append({"k_shot": k, "accuracy": round(mean, 6), "ci95": round(ci, 6), "episodes": episodes})
    return {
        "n_way": n_way, "query": query, "seed": seed, "classes": classes, "images": len(labels),
        "chance": round(1 / n_way, 6), "results": rows,
    }  # fmt: skip


def format_report(report: dict, model: str) -> str:
    lines = [
        f"few-shot: {model} on {report['images']} images of {len(report['classes'])} classes; "
        f"{report['n_way']}-way, {report['query']} queries per class, seed {report['seed']} "
        f"(chance {report['chance']:.3f})"
    ]
    for row in report["results"]:
        lines.append(
            f"  {report['n_way']}-way {row['k_shot']}-shot: accuracy {row['accuracy']:.4f} "
            f"\u00b1 {row['ci95']:.4f} (95% CI, {row['episodes']} episodes)"
        )
    return "\n".join(lines) + "\n"
