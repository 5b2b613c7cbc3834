"""Embeddings on disk: E.npy (N x D float32, L2-normalised) and the sidecar E.json (paths, labels, model).

Sidecar: {"format": "edgecls-embeddings/1", "count", "dim", "model": identity, "preprocess",
          "items": [{"path", "label"}]}; label is null for images outside class folders.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.atomic import atomic_write_bytes, atomic_write_text
from edgecls.errors import UserError

FORMAT = "edgecls-embeddings/1"
SPLITS = ("train", "val", "test")


def embedding_paths(out: str | Path) -> tuple[Path, Path]:
    """(E.npy, E.json) for `--out E` given as E, E.npy or E.json."""
    p = Path(out)
    base = p.with_suffix("") if p.suffix.lower() in (".npy", ".json") else p
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")


def label_of(path: str, root: str | Path) -> str | None:
    """The class folder an image sits in under `root` (DIR/<class>/x.jpg, or DIR/<split>/<class>/x.jpg)."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return None
    if len(parts) >= 3 and parts[0] in SPLITS:
        return parts[1]
    return parts[0] if len(parts) >= 2 else None


@dataclass
class Embeddings:
    vectors: np.ndarray
    paths: list[str]
    labels: list[str | None]
    model: dict
    preprocess: dict = field(default_factory=dict)

    def __post_init__(self):
        self.vectors = np.asarray(self.vectors, dtype=np.float32).reshape(len(self.paths), -1)
        if len(self.labels) != len(self.paths):
            raise ValueError("one label (or None) per path")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def classes(self) -> list[str]:
        return sorted({lab for lab in self.labels if lab is not None})

    @property
    def labelled(self) -> bool:
        return bool(self.paths) and all(lab is not None for lab in self.labels)

    def label_ids(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([index[lab] for lab in self.labels], dtype=np.int64)

    def save(self, out: str | Path, force: bool = False) -> tuple[Path, Path]:
        """Write E.npy then E.json, each atomically; an existing pair is kept unless `force`."""
        npy, side = embedding_paths(out)
        if not force and (npy.exists() or side.exists()):
            raise UserError(f"`out` {npy}: embeddings exist there; pass `force` to replace them or choose another name")
        npy.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, self.vectors, allow_pickle=False)
        atomic_write_bytes(buf.getvalue(), npy)
        sidecar = {
            "format": FORMAT,
            "count": len(self.paths),
            "dim": self.dim,
            "model": self.model,
            "preprocess": self.preprocess,
            "items": [{"path": p, "label": lab} for p, lab in zip(self.paths, self.labels)],
        }
        atomic_write_text(json.dumps(sidecar, indent=1) + "\n", side)
        return npy, side

    @classmethod
    def load(cls, path: str | Path) -> Embeddings:
        npy, side = embedding_paths(path)
        for f in (npy, side):
            if not f.is_file():
                raise UserError(f"{f}: not found; write embeddings with `edgecls embed --model M DIR --out {npy}`")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            vectors = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{npy}: unreadable embeddings ({exc}); write them again with edgecls embed") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{side}: not an edgecls embeddings sidecar (format {FORMAT})")
        items = meta.get("items", [])
        if vectors.ndim != 2 or len(vectors) != len(items):
            raise UserError(f"{npy}: holds {vectors.shape} vectors but {side} lists {len(items)} images; re-embed")
        return cls(
            vectors=vectors,
            paths=[str(it["path"]) for it in items],
            labels=[it.get("label") for it in items],
            model=meta.get("model", {}),
            preprocess=meta.get("preprocess", {}),
        )
