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
# The graph walks a PCA projection of the vectors when that keeps PROJECTION_VARIANCE of their variance in at most
# half the dimensions: each hop compares d bytes, not D, and the exact re-scoring in float32 of its candidates keeps
# the scores full-width. Fitted when the graph is built on at least PROJECTION_MIN_ROWS vectors (fewer walk fast at
# full width, and estimate the spread poorly). Measured (benchmarks/catalog_search.py): pretrained efficientnet-lite0
# embeddings of real images keep 90% of their variance in about a sixth of their 1280 dimensions, and the 40 best
# candidates of the projection still hold >= 0.99 of the true top 10; 0.99 of the variance would need over half.
PROJECTION_VARIANCE = 0.90
PROJECTION_MIN_ROWS = 5000


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


class Projection:
    """PCA of unit vectors onto their `d` leading directions; projected rows are re-normalised (cosine graph)."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray):
        self.mean = np.asarray(mean, np.float32)
        self.basis = np.ascontiguousarray(basis, dtype=np.float32)  # D x d

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    @classmethod
    def fit(
        cls, vectors: np.ndarray, variance: float = PROJECTION_VARIANCE, dim: int | None = None
    ) -> Projection | None:
        """The fewest leading directions that keep `variance` of the spread (or the `dim` leading ones); None when
        they are over half of D."""
        x = np.asarray(vectors, np.float64)
        mean = x.mean(axis=0)
        values, directions = np.linalg.eigh(np.cov(x - mean, rowvar=False))
        order = np.argsort(values)[::-1]
        share = np.cumsum(np.clip(values[order], 0, None)) / max(float(np.clip(values, 0, None).sum()), 1e-12)
        d = int(dim) if dim is not None else int(np.searchsorted(share, variance) + 1)
        if d > x.shape[1] // 2:
            return None
        return cls(mean, directions[:, order[:d]])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(np.asarray(vectors, np.float32)) - self.mean) @ self.basis
        return np.ascontiguousarray(z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12), dtype=np.float32)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, basis=self.basis)

    @classmethod
    def load(cls, path: str | Path, dim: int) -> Projection:
        try:
            with np.load(path, allow_pickle=False) as z:
                projection = cls(z["mean"], z["basis"])
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: unreadable HNSW projection ({exc}); rebuild the catalog") from None
        if projection.basis.shape[0] != int(dim):
            raise UserError(f"{path}: not a projection of {dim}-d vectors; rebuild the catalog")
        return projection


def projection_path(index_path: str | Path) -> Path:
    """Where an HNSW graph's projection is kept: beside it, INDEX.projection.npz."""
    return Path(str(index_path) + ".projection.npz")


class HnswIndex:
    """A usearch HNSW graph on unit vectors (inner product, or cosine for int8 storage: the same on unit rows), keyed
    by the caller's integers; with a `projection`, the graph holds the projected vectors (approximate scores: re-score
    its candidates exactly, RerankedIndex)."""

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        *,
        dtype: str = DTYPE,
        connectivity: int = CONNECTIVITY,
        expansion_add: int = EXPANSION_ADD,
        expansion_search: int = EXPANSION_SEARCH,
        projection: Projection | None = None,
    ):
        from usearch.index import Index

        self.dim, self.projection = int(dim), projection
        self.index = Index(
            ndim=projection.dim if projection is not None else self.dim,
            # usearch's i8 inner product is in raw integer units; its i8 cosine is 1 - cos (= 1 - dot on unit rows)
            metric="cos" if dtype == "i8" else "ip",
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        keys: np.ndarray | None = None,
        threads: int = 0,
        project_from: int | None = PROJECTION_MIN_ROWS,
        **kw,
    ) -> HnswIndex:
        """The graph of `vectors`, on their PCA projection when there are at least `project_from` of them (None:
        never) and it pays (Projection.fit)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        use = project_from is not None and len(vectors) >= max(2, project_from)
        index = cls(vectors.shape[1], projection=Projection.fit(vectors) if use else None, **kw)
        index.add(np.arange(len(vectors), dtype=np.int64) if keys is None else keys, vectors, threads=threads)
        return index

    def __len__(self) -> int:
        return len(self.index)

    def add(self, keys, vectors: np.ndarray, threads: int = 0) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys):
            self.index.add(keys, self._graph_rows(vectors), threads=threads)

    def _graph_rows(self, vectors: np.ndarray) -> np.ndarray:
        if self.projection is not None:
            return self.projection.apply(vectors)
        return np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)

    def remove(self, keys) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys):
            self.index.remove(keys)

    def search(self, queries: np.ndarray, k: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(cosine scores, keys), best first; rows with fewer than k hits are padded with score -inf, key -1."""
        q = self._graph_rows(queries)
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
        if self.projection is not None:
            self.projection.save(projection_path(path))
        else:
            projection_path(path).unlink(missing_ok=True)  # a full-width graph: no earlier projection may load with it

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
        projection = Projection.load(projection_path(path), dim) if projection_path(path).is_file() else None
        if restored is None or restored.ndim != (projection.dim if projection is not None else int(dim)):
            raise UserError(f"{path}: not a {dim}-d usearch index; rebuild the catalog")
        restored.expansion_search = expansion_search
        self = cls.__new__(cls)
        self.dim, self.index, self.projection = int(dim), restored, projection
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
