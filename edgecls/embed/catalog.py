"""A product catalog folder: one prototype per product, every image's embedding, optional HNSW index.

    CAT/manifest.json    {"format": "edgecls-catalog/1", "model": identity, "model_ref", "products", "dim",
                          "preprocess", "index": null | "hnsw", "count", "next_key", "files": {name: sha256}}
    CAT/prototypes.npy   P x D, row i = normalised mean embedding of products[i] (compute_prototypes)
    CAT/embeddings.npy/.json  every image's unit vector (edgecls.embed.store; labels = products,
                          paths = the catalog's own copies, relative to CAT)
    CAT/keys.npy         one int64 key per embedding row (the HNSW key; it survives adds and removes)
    CAT/images/<product>/<file>  copies of the catalog images
    CAT/index.usearch    the HNSW graph, when built with index="hnsw"
    CAT/index.usearch.projection.npz  the PCA the graph walks in, when it was built on enough vectors (index.py)

Every file is written atomically and the manifest last: it is the commit point, and it records each data
file's sha256, so a catalog whose update was cut short is reported rather than silently mixed. A new catalog
is built in a hidden sibling folder and renamed into place. `add` and `remove` embed only new images and
update the embeddings, the touched prototypes and the HNSW graph in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.atomic import atomic_copy, atomic_write_bytes, atomic_write_text
from edgecls.data.images import has_image_extension
from edgecls.data.layout import class_folders, is_hidden, walk_files
from edgecls.embed.features import Embedder, describe, same_model
from edgecls.embed.index import ExactIndex, HnswIndex, RerankedIndex, projection_path
from edgecls.embed.prototypes import compute_prototypes, cosine_scores
from edgecls.embed.store import Embeddings
from edgecls.errors import UserError

FORMAT = "edgecls-catalog/1"
MANIFEST, PROTOTYPES, EMBEDDINGS, KEYS, INDEX, IMAGES = (
    "manifest.json",
    "prototypes.npy",
    "embeddings",
    "keys.npy",
    "index.usearch",
    "images",
)
INDEX_KINDS = ("exact", "hnsw")


# ----------------------------------------------------------------------------- inputs
def product_images(folder: Path) -> list[str]:
    """The images of one product folder (recursive, hidden entries skipped), sorted."""
    return sorted(walk_files(folder, images_only=True))


def products_in(catalog_dir: str | Path) -> dict[str, list[str]]:
    """{product: image paths} of a folder holding one subfolder per product."""
    root = Path(catalog_dir)
    if not root.is_dir():
        raise UserError(f"`catalog_dir` {root}: no such folder; give a folder with one subfolder per product")
    names = class_folders(root)
    loose = [e.name for e in root.iterdir() if e.is_file() and has_image_extension(e.name) and not is_hidden(e.name)]
    if loose:
        warnings.warn(f"{root}: {len(loose)} image(s) outside product folders (e.g. {loose[0]}) left out", stacklevel=2)
    found = {name: product_images(root / name) for name in names}
    found = {name: imgs for name, imgs in found.items() if imgs}
    if not found:
        raise UserError(f"`catalog_dir` {root}: no product folders with images (expected {root}/<product>/*.jpg)")
    return found


def product_dirs(dirs: Sequence[str | Path]) -> dict[str, list[str]]:
    """{product: image paths} for folders each named after one product."""
    out: dict[str, list[str]] = {}
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise UserError(f"`dirs` {p}: no such folder; give product folders (DIR/<image files>)")
        name = p.resolve().name
        imgs = product_images(p)
        if not imgs:
            raise UserError(f"`dirs` {p}: no image files in this product folder")
        if name in out:
            raise UserError(f"`dirs`: product {name!r} given twice ({p})")
        out[name] = imgs
    return out


# ----------------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _save_npy(array: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(buf.getvalue(), path)


def _data_files(folder: Path, hnsw: HnswIndex | None) -> list[str]:
    names = [PROTOTYPES, EMBEDDINGS + ".npy", EMBEDDINGS + ".json", KEYS]
    if hnsw is None:
        return names
    return names + [INDEX] + ([projection_path(INDEX).name] if hnsw.projection is not None else [])


def is_catalog(folder: str | Path) -> bool:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def model_ref(model: str) -> str:
    """What a catalog records to load its model again: an absolute path for a file, else the backbone name."""
    return str(Path(model).resolve()) if Path(model).is_file() else model


# ----------------------------------------------------------------------------- the catalog
@dataclass
class Catalog:
    folder: Path
    manifest: dict
    prototypes: np.ndarray  # P x D, rows in `products` order
    embeddings: Embeddings  # paths relative to folder, labels = products
    keys: np.ndarray  # int64, one per embedding row
    hnsw: HnswIndex | None = None

    @property
    def products(self) -> list[str]:
        return list(self.manifest["products"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @classmethod
    def open(cls, folder: str | Path) -> Catalog:
        """Read and check a catalog folder (its files must match what its manifest recorded)."""
        folder = Path(folder)
        hint = "build one with `edgecls catalog build CATALOG_DIR --model M --out CAT`"
        if not (folder / MANIFEST).is_file():
            raise UserError(f"`cat` {folder}: not an edgecls catalog (no {MANIFEST}); {hint}")
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"`cat` {folder}: unreadable {MANIFEST} ({exc}); {hint}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"`cat` {folder}: {MANIFEST} is not an {FORMAT} manifest; {hint}")
        for name, digest in manifest.get("files", {}).items():
            f = folder / name
            if not f.is_file() or _sha256(f) != digest:
                raise UserError(
                    f"`cat` {folder}: {name} does not match {MANIFEST} (an update was cut short?); rebuild the catalog"
                )
        emb = Embeddings.load(folder / EMBEDDINGS)
        protos = np.load(folder / PROTOTYPES, allow_pickle=False).astype(np.float32)
        keys = np.load(folder / KEYS, allow_pickle=False).astype(np.int64)
        hnsw = HnswIndex.load(folder / INDEX, int(manifest["dim"])) if manifest.get("index") == "hnsw" else None
        return cls(folder, manifest, protos, emb, keys, hnsw)

    # ---- writing
    def _commit(self) -> None:
        """Write every data file, then the manifest (the commit point) with their hashes."""
        f = self.folder
        _save_npy(np.ascontiguousarray(self.prototypes, np.float32), f / PROTOTYPES)
        self.embeddings.save(f / EMBEDDINGS, force=True)
        _save_npy(np.asarray(self.keys, np.int64), f / KEYS)
        if self.hnsw is not None:
            self.hnsw.save(f / INDEX)
        self.manifest["count"] = len(self.embeddings.paths)
        self.manifest["files"] = {name: _sha256(f / name) for name in _data_files(f, self.hnsw)}
        atomic_write_text(json.dumps(self.manifest, indent=1) + "\n", f / MANIFEST)

    # ---- search
    def index(self, kind: str | None = None):
        """The image search index: `kind` "exact", "hnsw", or None (the catalog's HNSW graph if it has one)."""
        if kind is None:
            kind = "hnsw" if self.hnsw is not None else "exact"
        if kind == "hnsw":
            if self.hnsw is None:
                raise UserError(f"`index` hnsw: {self.folder} was built without one; use exact or rebuild with hnsw")
            return RerankedIndex(self.hnsw, self.embeddings.vectors, self.keys)
        if kind != "exact":
            raise UserError(f"`index` {kind!r}: choose one of {', '.join(INDEX_KINDS)}")
        return ExactIndex(self.embeddings.vectors, self.keys)

    def image_of_key(self) -> dict[int, int]:
        return {int(k): i for i, k in enumerate(self.keys)}

    def check_model(self, embedder: Embedder) -> None:
        if not same_model(embedder.identity, self.manifest.get("model", {})):
            raise UserError(
                f"`model` {describe(embedder.identity)} is not the catalog's model "
                f"{describe(self.manifest.get('model', {}))}; query with the catalog's model or rebuild the catalog"
            )

    def load_embedder(self, model: str | None = None, **kw) -> Embedder:
        """The catalog's model (its model_ref) or `model`, checked to be the same weights."""
        ref = model or self.manifest.get("model_ref")
        if not model and ref and Path(ref).is_absolute() and not Path(ref).is_file():
            raise UserError(f"`model`: the catalog's model {ref} is gone; pass `model` (the same weights)")
        embedder = Embedder.load(ref, **kw)
        self.check_model(embedder)
        return embedder

    def search(self, vectors: np.ndarray, topk: int, index=None) -> list[dict]:
        """Per unit query vector: {"products": [(cosine, product)], "nearest": [(cosine, product, image)]}."""
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        products = self.products
        scores = cosine_scores(vectors, self.prototypes)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : max(1, min(topk, len(products)))]
        index = self.index() if index is None else index
        near_scores, near_keys = index.search(vectors, topk)
        row_of = self.image_of_key()
        out = []
        for i in range(len(vectors)):
            nearest = []
            for s, k in zip(near_scores[i], near_keys[i]):
                if int(k) in row_of:
                    r = row_of[int(k)]
                    nearest.append((float(s), self.embeddings.labels[r], self.embeddings.paths[r]))
            out.append({"products": [(float(scores[i, j]), products[j]) for j in order[i]], "nearest": nearest})
        return out

    def image_file(self, row: int) -> Path:
        """The catalog's own copy of image `row` (for thumbnails)."""
        return self.folder / self.embeddings.paths[row]

    # ---- changing
    def add(self, found: dict[str, list[str]], embedder: Embedder, failed: list | None = None, **embed_kw) -> dict:
        """Embed the images of `found` ({product: paths}, new products or more images of old ones), copy them
        into the catalog and update embeddings, prototypes and the HNSW graph. Returns {product: images added}."""
        self.check_model(embedder)
        new_vecs, new_paths, new_labels, added = _embed_and_copy(self.folder, found, embedder, failed, embed_kw)
        emb = self.embeddings
        keys = np.arange(self.manifest["next_key"], self.manifest["next_key"] + len(new_paths), dtype=np.int64)
        self.embeddings = Embeddings(
            vectors=np.concatenate([emb.vectors, new_vecs]),
            paths=emb.paths + new_paths,
            labels=emb.labels + new_labels,
            model=emb.model,
            preprocess=emb.preprocess,
        )
        self.keys = np.concatenate([self.keys, keys])
        self.manifest["next_key"] = int(keys[-1]) + 1 if len(keys) else self.manifest["next_key"]
        if self.hnsw is not None:
            self.hnsw.add(keys, new_vecs)
        self._update_prototypes(set(added))
        self._commit()
        return added

    def remove(self, products: Sequence[str]) -> None:
        """Drop products: their embeddings, prototypes, HNSW entries and image copies."""
        unknown = [p for p in products if p not in self.manifest["products"]]
        if unknown:
            raise UserError(f"`products` {unknown[0]!r}: not in the catalog {self.folder}; see its manifest.json")
        gone = set(products)
        if gone >= set(self.manifest["products"]):
            raise UserError("`products`: removing every product would leave an empty catalog; build a new one")
        emb = self.embeddings
        keep = np.asarray([lab not in gone for lab in emb.labels], bool)
        if self.hnsw is not None:
            self.hnsw.remove(self.keys[~keep])
        self.embeddings = Embeddings(
            vectors=emb.vectors[keep],
            paths=[p for p, k in zip(emb.paths, keep) if k],
            labels=[lab for lab, k in zip(emb.labels, keep) if k],
            model=emb.model,
            preprocess=emb.preprocess,
        )
        self.keys = self.keys[keep]
        self._update_prototypes(set())
        self._commit()
        for p in gone:  # after the commit: a crash before it leaves the old catalog whole
            shutil.rmtree(self.folder / IMAGES / p, ignore_errors=True)

    def _update_prototypes(self, touched: set[str]) -> None:
        """Recompute the prototypes of `touched` products; keep the others' rows; products re-sorted."""
        old = dict(zip(self.manifest["products"], self.prototypes))
        products = sorted(set(self.embeddings.labels))
        touched = touched | {p for p in products if p not in old}
        rows = {}
        if touched:
            labels = np.asarray(self.embeddings.labels, dtype=object)
            sel = np.isin(labels, list(touched))
            names, protos = compute_prototypes(self.embeddings.vectors[sel], labels[sel].tolist(), sorted(touched))
            rows = dict(zip(names, protos))
        self.prototypes = np.stack([rows[p] if p in rows else old[p] for p in products]).astype(np.float32)
        self.manifest["products"] = products


def _embed_and_copy(folder: Path, found: dict[str, list[str]], embedder: Embedder, failed, embed_kw):
    """(vectors, catalog-relative paths, labels, {product: count}) of the readable images of `found`, copied
    into folder/images/<product>/ under names not used there yet."""
    from edgecls.embed.embed import embed_images

    paths = [p for imgs in found.values() for p in imgs]
    labels = [prod for prod, imgs in found.items() for _ in imgs]
    local: list = []
    emb = embed_images(embedder, paths, labels=labels, failed=local, **embed_kw)
    if failed is not None:
        failed.extend(local)
    bad = {p for p, _ in local}
    empty = [prod for prod, imgs in found.items() if all(p in bad for p in imgs)]
    if empty:
        raise UserError(f"product {empty[0]!r}: none of its images could be read; fix or drop that folder")
    rel_paths, added = [], {}
    for src, prod in zip(emb.paths, emb.labels):
        rel_paths.append(_copy_image(folder, prod, src, _source_root(found[prod])))
        added[prod] = added.get(prod, 0) + 1
    return emb.vectors, rel_paths, list(emb.labels), added


def _source_root(imgs: list[str]) -> str:
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in imgs])


def _copy_image(folder: Path, product: str, src: str, root: str) -> str:
    """Copy `src` to folder/images/<product>/<name> (sub-folders flattened with __, -2, -3 on a clash)."""
    rel = os.path.relpath(os.path.abspath(src), root).replace(os.sep, "__")
    dest_dir = folder / IMAGES / product
    stem, suffix = os.path.splitext(rel)
    name, n = rel, 1
    while (dest_dir / name).exists():
        n += 1
        name = f"{stem}-{n}{suffix}"
    atomic_copy(src, dest_dir / name)
    return f"{IMAGES}/{product}/{name}"


# ----------------------------------------------------------------------------- build
def check_out(out: Path, force: bool) -> None:
    """A new catalog may go to a missing or empty folder, or replace a catalog with `force`; nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"`out` {out}: exists and is not a folder; choose another `out`")
    if is_catalog(out):
        if not force:
            raise UserError(f"`out` {out}: a catalog exists there; pass `force` to replace it, or use catalog add")
        return
    if any(out.iterdir()):
        raise UserError(f"`out` {out}: a non-empty folder that is not a catalog; choose another `out`")


def build_catalog(
    catalog_dir: str | Path,
    embedder: Embedder,
    out: str | Path,
    *,
    model: str,
    index: str = "exact",
    force: bool = False,
    failed: list | None = None,
    hnsw_kw: dict | None = None,
    **embed_kw,
) -> Catalog:
    """Build CAT from CATALOG_DIR/<product>/ images: built in a hidden sibling folder, then renamed into place."""
    if index not in INDEX_KINDS:
        raise UserError(f"`index` {index!r}: choose one of {', '.join(INDEX_KINDS)}")
    out = Path(out)
    check_out(out, force)
    found = products_in(catalog_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        vecs, rel, labels, _ = _embed_and_copy(tmp, found, embedder, failed, embed_kw)
        keys = np.arange(len(rel), dtype=np.int64)
        manifest = {
            "format": FORMAT,
            "model": embedder.identity,
            "model_ref": model_ref(model),
            "products": [],
            "dim": int(vecs.shape[1]),
            "preprocess": embedder.preprocess.to_dict(),
            "index": "hnsw" if index == "hnsw" else None,
            "next_key": len(rel),
        }
        emb = Embeddings(vecs, rel, labels, model=embedder.identity, preprocess=embedder.preprocess.to_dict())
        hnsw = HnswIndex.build(vecs, keys, **(hnsw_kw or {})) if index == "hnsw" else None
        cat = Catalog(tmp, manifest, np.zeros((0, vecs.shape[1]), np.float32), emb, keys, hnsw)
        cat._update_prototypes(set(labels))
        cat._commit()
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cat.folder = out
    return cat


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rmdir(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def query_paths(cat: Catalog, embedder: Embedder, paths, topk: int, index=None, **kw) -> Iterator[tuple]:
    """Yield (path, search result | None, reason | None) per image path, in order (Catalog.search)."""
    index = cat.index() if index is None else index
    for path, vec, reason in embedder.embed_paths(paths, **kw):
        yield path, (None if vec is None else cat.search(vec[None], topk, index)[0]), reason


def query_record(path: str, result: dict) -> dict:
    """inference.py's prediction record plus "nearest": [[cosine, product, image], ...] (eval ignores it)."""
    from edgecls.classify import prediction_record

    record = prediction_record(path, result["products"])
    record["nearest"] = [[s, prod, img] for s, prod, img in result["nearest"]]
    return record


def is_query_record(path: Path) -> bool:
    """A JSON file holding one record as `edgecls catalog query` writes it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"img_path", "0_0", "nearest"}
