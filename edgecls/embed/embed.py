"""Embed many images: batched, with a progress bar, unreadable files reported and skipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgecls.embed.features import Embedder
from edgecls.embed.store import Embeddings, label_of
from edgecls.errors import UserError
from edgecls.progress import progress_bar


def embed_images(
    embedder: Embedder,
    paths: Sequence[str],
    *,
    root: str | Path | None = None,
    labels: Sequence[str | None] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    failed: list | None = None,
) -> Embeddings:
    """Embeddings of the readable `paths`; labels from `labels`, else from class folders under `root`.

    Unreadable images are left out and appended to `failed` as (path, reason)."""
    if labels is None:
        labels = [label_of(p, root) if root is not None else None for p in paths]
    label_by_path = {str(p): lab for p, lab in zip(paths, labels)}
    kept, vecs, first_failure = [], [], None
    with progress_bar(len(paths), progress, desc="embed") as bar:
        for path, vec, reason in embedder.embed_paths(paths, batch_size=batch_size, workers=workers):
            bar.update(1)
            if vec is None:
                first_failure = first_failure or f"{path}: {reason}"
                if failed is not None:
                    failed.append((path, reason))
                continue
            kept.append(path)
            vecs.append(vec)
    if not kept:
        raise UserError(f"none of the {len(paths)} images could be read (first: {first_failure}); check the files")
    return Embeddings(
        vectors=np.stack(vecs),
        paths=kept,
        labels=[label_by_path.get(p) for p in kept],
        model=embedder.identity,
        preprocess=embedder.preprocess.to_dict(),
    )
