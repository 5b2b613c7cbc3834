"""Nearest-neighbour search over unit vectors: exact (one float32 matmul + argpartition) or a usearch HNSW graph.

Both answer `search(queries, k) -> (scores, keys)`: cosine scores best first and the caller's integer keys
(a catalog gives each image a key that survives adds and removes), so the two are interchangeable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecls.atomic import atomic_path
from edgecls.errors import UserError

# HNSW defaults chosen with benchmarks/catalog_search.py (50k x 1280, 2 cores): an int8 graph walks ~2x faster
# than f16 (f32 builds ~3x slower still) and its candidates are re-scored exactly in float32 (RerankedIndex), which
# lifts recall@10 from 0.94 to 0.98 for the cost of a 40 x D dot product
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 96
DTYPE = "i8"
RERANK_CANDIDATES = 40


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, column indices) of the k largest entries of each row of a 2-D array, best first."""
    k = max(0, min(int(k), scores.shape[1]))
    if k == 0:
        return np.zeros((len(scores), 0), scores.dtype), np.zeros((len(scores), 0), np.int64)
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


class ExactIndex:
    """Brute-force cosine search: one matrix multiply over the stored unit vectors."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, keys: np.ndarray | None = None):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.keys = np.arange(len(self.vectors), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        vals, cols = topk_rows(q @ self.vectors.T, k)
        return vals, self.keys[cols]


class HnswIndex:
    """A usearch HNSW graph on unit vectors (inner product, or cosine for int8 storage: the same on unit rows), keyed
    by the caller's integers."""

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        *,
        dtype: str = DTYPE,
        connectivity: int = CONNECTIVITY,
        expansion_add: int = EXPANSION_ADD,
        expansion_search: int = EXPANSION_SEARCH,
    ):
        from usearch.index import Index

        self.dim = int(dim)
        self.index = Index(
            ndim=self.dim,
            # usearch's i8 inner product is in raw integer units; its i8 cosine is 1 - cos (= 1 - dot on unit rows)
            metric="cos" if dtype == "i8" else "ip",
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )

    @classmethod
    def build(cls, vectors: np.ndarray, keys: np.ndarray | None = None, threads: int = 0, **kw) -> HnswIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = cls(vectors.shape[1], **kw)
        index.add(np.arange(len(vectors), dtype=np.int64) if keys is None else keys, vectors, threads=threads)
        return index

    def __len__(self) -> int:
        return len(self.index)

    def add(self, keys, vectors: np.ndarray, threads: int = 0) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys):
            self.index.add(keys, np.ascontiguousarray(vectors, dtype=np.float32), threads=threads)

    def remove(self, keys) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys):
            self.index.remove(keys)

    def search(self, queries: np.ndarray, k: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(cosine scores, keys), best first; rows with fewer than k hits are padded with score -inf, key -1."""
        q = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
        k = max(1, min(int(k), len(self.index)))
        found = self.index.search(q, k, threads=threads)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(q), -1)
        dist = np.asarray(found.distances, dtype=np.float32).reshape(len(q), -1)
        counts = np.asarray(getattr(found, "counts", [keys.shape[1]])).reshape(len(q))  # one query: Matches
        scores = 1.0 - dist  # usearch's ip and cos distances are 1 - similarity
        missing = np.arange(keys.shape[1])[None, :] >= counts[:, None]
        scores[missing], keys[missing] = -np.inf, -1
        return scores, keys

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            self.index.save(str(tmp))

    @classmethod
    def load(cls, path: str | Path, dim: int, expansion_search: int = EXPANSION_SEARCH) -> HnswIndex:
        from usearch.index import Index

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: the catalog's HNSW index is missing; rebuild the catalog with `index` hnsw")
        try:
            restored = Index.restore(str(path))
        except Exception as exc:  # noqa: BLE001 - usearch raises bare RuntimeErrors for bad files
            raise UserError(f"{path}: unreadable HNSW index ({exc}); rebuild the catalog") from None
        if restored is None or restored.ndim != int(dim):
            raise UserError(f"{path}: not a {dim}-d usearch index; rebuild the catalog")
        restored.expansion_search = expansion_search
        self = cls.__new__(cls)
        self.dim, self.index = int(dim), restored
        return self


class RerankedIndex:
    """An HNSW graph's `candidates` best keys per query, re-scored exactly against the stored float32 vectors: the
    graph finds the neighbourhood, the dot products rank it (approximate storage, exact scores)."""

    kind = "hnsw"

    def __init__(self, graph: HnswIndex, vectors: np.ndarray, keys: np.ndarray, candidates: int = RERANK_CANDIDATES):
        self.graph, self.candidates = graph, int(candidates)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.keys = np.asarray(keys, np.int64)
        self.row_of = {int(k): i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.graph)

    def search(self, queries: np.ndarray, k: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        _, found = self.graph.search(q, max(int(k), self.candidates), threads=threads)
        k = max(1, min(int(k), found.shape[1]))
        scores = np.full((len(q), k), -np.inf, np.float32)
        keys = np.full((len(q), k), -1, np.int64)
        for i, row_keys in enumerate(found):
            rows = np.asarray([self.row_of[int(key)] for key in row_keys if int(key) in self.row_of], np.int64)
            if not len(rows):
                continue
            vals, cols = topk_rows((self.vectors[rows] @ q[i])[None], k)
            scores[i, : vals.shape[1]], keys[i, : vals.shape[1]] = vals[0], self.keys[rows[cols[0]]]
        return scores, keys


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true top-k keys that `found` (same shape) also returned."""
    found, truth = np.atleast_2d(found), np.atleast_2d(truth)
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / max(1, truth.size)
