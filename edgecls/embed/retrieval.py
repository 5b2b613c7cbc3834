"""Leave-one-out retrieval metrics of labelled embeddings: each vector queries all the others (itself excluded).

Neighbours are ranked by cosine similarity (a matmul of unit vectors, in row chunks so memory stays bounded);
an item is relevant to a query when it has the query's label. Over the queries that have at least one relevant
item (a class of one image has none and is left out):

- P@1, P@5: the share of relevant items among the query's 1 (5) nearest (all N - 1 when fewer than 5);
- mAP@10: the mean over queries of AP@10 = sum_{i<=10} P@i * rel_i / min(10, R), where rel_i is 1 when the
  i-th nearest is relevant, P@i the precision of the first i, and R the number of relevant items in the gallery
  (so a query whose R relevant items (R < 10) all come first scores 1);
- kNN top-1 accuracy: the majority label of the k nearest equals the query's label; a tie goes to the tied label
  whose first neighbour ranks nearest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgecls.embed.features import l2_normalize
from edgecls.errors import UserError

MAP_DEPTH = 10
CHUNK_BYTES = 64 << 20  # one chunk's similarity block (rows x N float32)


def nearest(vectors: np.ndarray, depth: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), N x depth: each row's nearest other rows by cosine, nearest first (self left out)."""
    v = l2_normalize(vectors)
    n = len(v)
    if not 1 <= depth <= n - 1:
        raise ValueError(f"depth {depth}: must be between 1 and N - 1 = {n - 1}")
    rows = max(1, chunk_bytes // (4 * n))
    idx = np.empty((n, depth), np.int64)
    sim = np.empty((n, depth), np.float32)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = v[start:stop] @ v.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        part = np.argpartition(-block, depth - 1, axis=1)[:, :depth]
        part_sim = np.take_along_axis(block, part, axis=1)
        order = np.lexsort((part, -part_sim), axis=1)  # by similarity, then by index for exact ties
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(part_sim, order, axis=1)
    return idx, sim


def knn_vote(neighbour_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Majority label per row of N x k neighbour labels (nearest first); ties go to the label seen first."""
    n, k = neighbour_labels.shape
    hits = neighbour_labels[:, :, None] == np.arange(num_classes)[None, None, :]  # N x k x C
    counts = hits.sum(axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), k)  # rank of each label's nearest neighbour
    return np.argmax(counts * (k + 1) - first, axis=1)


@dataclass
class RetrievalMetrics:
    queries: int  # queries with at least one relevant item (those the metrics average over)
    skipped: int  # labelled items whose class has no other item
    unlabelled: int  # items without a label, left out of queries and gallery
    k: int
    p_at_1: float
    p_at_5: float
    map_at_10: float
    knn_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, k: int = 5) -> RetrievalMetrics:
    """Leave-one-out P@1, P@5, mAP@10 and kNN top-1 accuracy (see the module docstring) of integer `labels`."""
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise UserError(f"retrieval needs at least 2 labelled embeddings; these hold {n}")
    if not 1 <= k <= n - 1:
        raise UserError(f"`k` {k}: must be between 1 and {n - 1} (the number of labelled embeddings less one)")
    _, ids = np.unique(labels, return_inverse=True)
    depth = min(n - 1, max(MAP_DEPTH, 5, k))
    idx, _ = nearest(vectors, depth)
    rel = ids[idx] == ids[:, None]  # N x depth
    relevant = np.bincount(ids)[ids] - 1
    keep = relevant > 0
    if not keep.any():
        raise UserError("no class has two labelled embeddings: retrieval has nothing to find")
    rel, relevant = rel[keep], relevant[keep]
    d = min(MAP_DEPTH, depth)
    precision = np.cumsum(rel[:, :d], axis=1) / np.arange(1, d + 1)
    ap = (precision * rel[:, :d]).sum(axis=1) / np.minimum(MAP_DEPTH, relevant)
    near = ids[idx[keep, :k]]
    rows = max(1, CHUNK_BYTES // (k * (int(ids.max()) + 1)))  # knn_vote's N x k x C block, in row chunks
    voted = np.concatenate([knn_vote(near[i : i + rows], int(ids.max()) + 1) for i in range(0, len(near), rows)])
    return RetrievalMetrics(
        queries=int(keep.sum()),
        skipped=int((~keep).sum()),
        unlabelled=0,
        k=k,
        p_at_1=float(rel[:, 0].mean()),
        p_at_5=float(rel[:, : min(5, depth)].mean()),
        map_at_10=float(ap.mean()),
        knn_accuracy=float((voted == ids[keep]).mean()),
    )


def embeddings_retrieval(emb, k: int = 5) -> RetrievalMetrics:
    """retrieval_metrics of an Embeddings' labelled items; unlabelled ones are left out and counted."""
    known = np.asarray([lab is not None for lab in emb.labels], dtype=bool)
    if not known.any():
        raise UserError("these embeddings have no labels; embed images that sit in class folders (DIR/<class>/)")
    labels = [lab for lab in emb.labels if lab is not None]
    index = {c: i for i, c in enumerate(sorted(set(labels)))}
    m = retrieval_metrics(emb.vectors[known], np.asarray([index[lab] for lab in labels]), k=k)
    m.unlabelled = int((~known).sum())
    return m
