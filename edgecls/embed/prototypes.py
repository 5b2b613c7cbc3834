"""Few-shot class prototypes: the normalised mean of each class's unit embeddings (nearest-centroid).

A catalog's products and a support folder's classes both become prototypes this way, so a catalog query
and the exported prototype ONNX rank classes by the same cosine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecls.embed.features import l2_normalize
from edgecls.errors import UserError


def compute_prototypes(vectors: np.ndarray, labels, classes: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(classes, C x D unit prototypes): row c is the L2-normalised mean of the unit rows labelled classes[c]."""
    vectors = l2_normalize(vectors)
    labels = list(labels)
    if any(lab is None for lab in labels):
        raise UserError("every support image needs a label (its class folder) to make prototypes")
    classes = sorted(set(labels)) if classes is None else list(classes)
    index = {c: i for i, c in enumerate(classes)}
    sums = np.zeros((len(classes), vectors.shape[1]), np.float64)
    counts = np.zeros(len(classes), np.int64)
    for vec, lab in zip(vectors, labels):
        sums[index[lab]] += vec
        counts[index[lab]] += 1
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise UserError(f"class {empty[0]!r} has no support images; give each class at least one")
    return classes, l2_normalize(sums / counts[:, None])


def cosine_scores(queries: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """N x C cosine of unit queries to unit prototypes (one matrix multiply)."""
    return np.asarray(queries, np.float32) @ np.asarray(prototypes, np.float32).T


def read_catalog_prototypes(folder: str | Path) -> tuple[list[str], np.ndarray, dict]:
    """(products, P x D prototypes, manifest) of a catalog folder (CAT/manifest.json + CAT/prototypes.npy)."""
    folder = Path(folder)
    manifest_file = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        protos = np.load(folder / "prototypes.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        hint = "build it with edgecls catalog build"
        raise UserError(f"{folder}: not a readable edgecls catalog ({exc}); {hint}") from None
    products = [str(p) for p in manifest.get("products", [])]
    if protos.shape[0] != len(products):
        raise UserError(f"{folder}: prototypes.npy has {protos.shape[0]} rows for {len(products)} products; rebuild it")
    return products, protos.astype(np.float32), manifest
