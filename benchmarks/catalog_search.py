#!/usr/bin/env python3
"""Catalog search speed: exact matmul vs the memory-bandwidth floor, HNSW (f32/f16/i8) vs exact, add-one-product.

    python benchmarks/catalog_search.py                   # 50,000 x 1280 vectors, ~12 min on 2 cores
    python benchmarks/catalog_search.py --n 10000 --dim 512 --skip-add --real 0

Measured in one run (each figure beside its baseline):
  bandwidth   memory read rate: the fastest of sum / max / self-dot over a buffer 4x the catalog, per core
  exact       ExactIndex top-10: single-query p50/p95 (baseline: catalog bytes / bandwidth, the floor)
              and batched queries/s (batches of --batch)
  real        --real Fashion-MNIST photos embedded by pretrained efficientnet-lite0: how many dimensions keep
              80-99% of their variance, the catalog's projection width, and recall@10 of the re-scored i8
              HNSW search on that projection and at full width, against exact search
  hnsw        usearch HNSW per dtype (f32, f16, i8), on the full vectors and on a PCA projection to the width
              the real embeddings needed (the catalog's default from 5,000 vectors; always re-scored exactly):
              build time, single-query p50, recall@10 vs exact, speedup over exact single-query
  add         one product of 5 real photos (JPEG crops of the sklearn sample photos) added to a
              1,000-product x 5-image catalog (synthetic vectors, efficientnet-lite0 identity) with an HNSW
              graph: open + embed (real efficientnet-lite0) + update + commit, in-process and as the CLI
              (`edgecls catalog add`, a new process); baseline: rebuilding prototypes + HNSW from scratch
Targets: exact single-query >= 0.7 of the floor; batched >= 1,000 q/s; HNSW recall@10 >= 0.98 at >= 10x the
exact single-query rate; add-one-product < 2 s. Writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecls.embed.index import (  # noqa: E402
    CONNECTIVITY,
    PROJECTION_VARIANCE,
    RERANK_CANDIDATES,
    ExactIndex,
    HnswIndex,
    Projection,
    RerankedIndex,
    recall_at_k,
)

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")  # apt-get install dataset-fashion-mnist


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# Intrinsic dimension of the synthetic embeddings. Real ones spread further (lite0 on 5,000 Fashion-MNIST photos:
# 90% of the variance in 228 of 1280 dimensions), so the projected graphs take the real embeddings' width (bench_real).
LATENT = 64


def views(centers: np.ndarray, basis: np.ndarray, rng) -> np.ndarray:
    """One unit vector per LATENT-d product centre: centre + view noise, mapped to the basis's width, plus a
    little isotropic noise (like pooled image embeddings, whose intrinsic dimension is low)."""
    z = centers + 0.35 * rng.standard_normal(centers.shape).astype(np.float32)
    return unit(z @ basis + 0.5 * rng.standard_normal((len(z), basis.shape[1])).astype(np.float32))


def catalog_vectors(n: int, dim: int, rng, per: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n unit vectors, `per` views of each product; the basis; each vector's product centre)."""
    basis = rng.standard_normal((LATENT, dim)).astype(np.float32)
    centers = np.repeat(rng.standard_normal((n // per + 1, LATENT)).astype(np.float32), per, axis=0)[:n]
    return views(centers, basis, rng), basis, centers


def bandwidth(nbytes: int, threads: int) -> float:
    """Bytes/s of the fastest of three streaming reads of a float32 buffer (sum, max, self dot product), each
    split over `threads` threads (numpy and BLAS drop the GIL): a pairwise sum alone is compute-bound here."""
    buf = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(buf, threads)
    best = 0.0
    for read in (np.add.reduce, np.max, lambda p: np.dot(p, p)):
        for _ in range(3):
            ts = [threading.Thread(target=read, args=(p,)) for p in parts]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            best = max(best, buf.nbytes / (time.perf_counter() - t0))
    return best


def latencies(fn, queries) -> np.ndarray:
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def real_embeddings(count: int, rng) -> np.ndarray:
    """Pretrained efficientnet-lite0 unit embeddings of `count` seeded Fashion-MNIST photos (real images)."""
    import gzip

    from PIL import Image

    from edgecls.embed.features import Embedder

    with gzip.open(FASHION) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    images = images[np.sort(rng.choice(len(images), count, replace=False))]
    embedder = Embedder.load("efficientnet-lite0")
    rows = []
    for i in range(0, len(images), 64):
        batch = [embedder.preprocess_image(Image.fromarray(x).convert("RGB")) for x in images[i : i + 64]]
        rows.append(embedder.predict_arrays(np.stack(batch)))
    return unit(np.concatenate(rows))


def bench_real(args, rng) -> dict:
    """The projection on real embeddings: its width by the catalog's rule, and the recall@10 of the re-scored
    HNSW search on it (against exact search) beside the full-width graph's."""
    t0 = time.perf_counter()
    vecs = real_embeddings(args.real, rng)
    print(f"real embeddings: {len(vecs)} Fashion-MNIST photos, efficientnet-lite0 ({time.perf_counter() - t0:.0f} s)")
    held = rng.choice(len(vecs), max(1, len(vecs) // 10), replace=False)
    queries, base = vecs[held], np.delete(vecs, held, axis=0)
    truth = ExactIndex(base).search(queries, 10)[1]
    projection = Projection.fit(base)
    dims = {v: getattr(Projection.fit(base, v), "dim", None) for v in (0.8, 0.9, 0.95, 0.99)}
    print(f"  dimensions keeping 80/90/95/99% of the variance: {dims} (of {base.shape[1]}; None: over half)")
    res = {"n": len(base), "queries": len(queries), "dims_by_variance": dims, "by_expansion": {}}
    if projection is None:
        print(f"  no projection keeps {PROJECTION_VARIANCE} of the variance in half the dimensions")
        return res
    res["projection_dim"] = projection.dim
    keys = np.arange(len(base), dtype=np.int64)
    graphs = {
        "i8": HnswIndex.build(base, project_from=None),
        f"i8+pca{projection.dim}": HnswIndex(base.shape[1], projection=projection),
    }
    graphs[f"i8+pca{projection.dim}"].add(keys, base)
    print(f"  {'graph':<24} {'recall@10 (re-scored ' + str(RERANK_CANDIDATES) + ')':>30}  target >= 0.98")
    for name, graph in graphs.items():
        for ef in (int(e) for e in args.expansion.split(",")):
            graph.index.expansion_search = ef
            rec = recall_at_k(RerankedIndex(graph, base, keys).search(queries, 10)[1], truth)
            res["by_expansion"][f"{name} ef={ef}"] = rec
            print(f"  {name + ' ef=' + str(ef):<24} {rec:>30.4f}  {verdict(rec >= 0.98)}")
    return res


def bench_search(args, rng, projection_dim: int | None = None) -> dict:
    """projection_dim: the projected graphs' width (the real embeddings'); None: the catalog's rule on these vectors."""
    n, dim = args.n, args.dim
    vecs, basis, centers = catalog_vectors(n, dim, rng)
    queries = views(centers[rng.choice(n, args.queries, replace=False)], basis, rng)  # new views of products
    res: dict = {"n": n, "dim": dim, "queries": args.queries}

    bw = bandwidth(max(4 * vecs.nbytes, 1 << 30), os.cpu_count() or 1)
    floor = vecs.nbytes / bw
    res["bandwidth_gbs"], res["floor_ms"] = bw / 1e9, floor * 1e3
    mb = vecs.nbytes / 1e6
    print(f"memory read bandwidth {bw / 1e9:.1f} GB/s; catalog {mb:.0f} MB -> floor {floor * 1e3:.2f} ms")

    exact = ExactIndex(vecs)
    latencies(lambda q: exact.search(q, 10), queries[:20])  # warm-up
    lat = latencies(lambda q: exact.search(q, 10), queries)
    p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
    batches = [queries[i : i + args.batch] for i in range(0, len(queries), args.batch)]
    exact.search(batches[0], 10)  # warm-up: the first batch pays the score buffer's page faults
    t0 = time.perf_counter()
    truth = np.concatenate([exact.search(b, 10)[1] for b in batches])
    qps = len(queries) / (time.perf_counter() - t0)
    res["exact"] = {"p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3, "batched_qps": qps, "achieved_over_floor": floor / p50}
    print(f"\n{'exact top-10':<28} {'figure':>12} {'baseline':>12} {'ratio':>7}  target")
    print(f"{'single-query p50':<28} {p50 * 1e3:>10.2f}ms {floor * 1e3:>10.2f}ms {floor / p50:>7.2f}  "
          f">= 0.7 of floor {verdict(floor / p50 >= 0.7)}")  # fmt: skip
    print(f"{'single-query p95':<28} {p95 * 1e3:>10.2f}ms")
    print(f"{'batched (batch ' + str(args.batch) + ')':<28} {qps:>9.0f}q/s {1 / p50:>9.0f}q/s {qps * p50:>7.1f}  "
          f">= 1,000 q/s {verdict(qps >= 1000)}")  # fmt: skip

    print(f"\n{'HNSW (M=' + str(CONNECTIVITY) + ')':<28} {'build s':>8} "
          f"{'p50 ms':>8} {'recall@10':>10} {'x exact':>8}  target: recall >= 0.98 at >= 10x")  # fmt: skip
    res["hnsw"] = {}
    graphs = [(dtype, project) for dtype in args.dtypes.split(",") for project in (False, True)]
    for dtype, project in graphs:
        t0 = time.perf_counter()
        if project and projection_dim is not None:  # the width real embeddings need, not this synthetic set's
            index = HnswIndex(dim, dtype=dtype, projection=Projection.fit(vecs, dim=projection_dim))
            index.add(np.arange(n, dtype=np.int64), vecs, threads=os.cpu_count() or 1)
        else:
            index = HnswIndex.build(vecs, dtype=dtype, threads=os.cpu_count() or 1, project_from=0 if project else None)
        build = time.perf_counter() - t0
        if project and index.projection is None:
            print(f"{dtype}: no projection keeps {PROJECTION_VARIANCE} of the variance in half the dimensions")
            continue
        graph = f"{dtype}+pca{index.projection.dim}" if project else dtype
        res["hnsw"][graph] = {"build_s": build, "bytes": index.index.memory_usage, "by_expansion": {}}
        keys = np.arange(len(vecs), dtype=np.int64)
        for ef in (int(e) for e in args.expansion.split(",")):
            index.index.expansion_search = ef
            variants = (("", index), (f"+rerank{RERANK_CANDIDATES}", RerankedIndex(index, vecs, keys)))
            for suffix, searcher in variants[1:] if project else variants:  # projected scores need re-scoring
                one = lambda q, s=searcher: s.search(q, 10, threads=1)  # noqa: E731
                latencies(one, queries[:20])
                hl = np.percentile(latencies(one, queries), 50)
                _, found = searcher.search(queries, 10, threads=os.cpu_count() or 1)
                rec = recall_at_k(found, truth)
                fig = {"p50_ms": hl * 1e3, "recall_at_10": rec, "speedup": p50 / hl}
                res["hnsw"][graph]["by_expansion"][f"{ef}{suffix}"] = fig
                ok = rec >= 0.98 and p50 / hl >= 10
                name = f"{graph} ef={ef}{suffix}"
                print(f"{name:<28} {build:>8.1f} {hl * 1e3:>8.3f} {rec:>10.4f} {p50 / hl:>7.1f}x  {verdict(ok)}")
        del index
    return res


def write_photos(folder: Path, count: int, rng) -> list[str]:
    from benchmarks.photos import random_view, source_photos

    photos = list(source_photos().values())
    folder.mkdir(parents=True)
    for i in range(count):
        random_view(photos[i % len(photos)], (320, 240), rng).save(folder / f"view{i}.jpg", quality=90)
    return sorted(str(p) for p in folder.iterdir())


def synthetic_catalog(folder: Path, embedder, products: int, per: int, rng, hnsw: bool):
    """A catalog of `products` x `per` synthetic unit vectors carrying the embedder's identity."""
    from edgecls.embed.catalog import FORMAT, Catalog
    from edgecls.embed.store import Embeddings

    n = products * per
    vecs = catalog_vectors(n, embedder.dim, rng, per)[0]
    labels = [f"p{i // per:05d}" for i in range(n)]
    paths = [f"images/{lab}/{i % per}.jpg" for i, lab in enumerate(labels)]
    pre = embedder.preprocess.to_dict()
    emb = Embeddings(vecs, paths, labels, model=embedder.identity, preprocess=pre)
    keys = np.arange(n, dtype=np.int64)
    manifest = {"format": FORMAT, "model": embedder.identity, "model_ref": "efficientnet-lite0", "products": [],
                "dim": embedder.dim, "preprocess": pre, "index": "hnsw" if hnsw else None, "next_key": n}  # fmt: skip
    t0 = time.perf_counter()
    index = HnswIndex.build(vecs, keys, threads=os.cpu_count() or 1) if hnsw else None
    cat = Catalog(folder, manifest, np.zeros((0, embedder.dim), np.float32), emb, keys, index)
    cat._update_prototypes(set(labels))
    rebuild = time.perf_counter() - t0
    folder.mkdir(parents=True)
    cat._commit()
    return rebuild


def bench_add(args, rng) -> dict:
    from edgecls.embed.catalog import Catalog
    from edgecls.embed.features import Embedder

    tmp = Path(tempfile.mkdtemp(prefix="catalog_bench_"))
    photos = write_photos(tmp / "new" / "newproduct", 5, rng)
    t0 = time.perf_counter()
    embedder = Embedder.load("efficientnet-lite0")
    load_s = time.perf_counter() - t0
    rebuild = synthetic_catalog(tmp / "CAT", embedder, args.products, 5, rng, hnsw=True)

    t0 = time.perf_counter()
    cat = Catalog.open(tmp / "CAT")
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    cat.add({"newproduct": photos}, embedder, batch_size=8)
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    cat.remove(["newproduct"])
    t_remove = time.perf_counter() - t0

    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "edgecls", "catalog", "add", str(tmp / "CAT"), str(tmp / "new" / "newproduct")]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    t_cli = time.perf_counter() - t0
    if r.returncode:
        print(r.stderr, file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, edgecls.embed.catalog"], env=env, check=True)
    t_imports = time.perf_counter() - t0
    in_process = t_open + t_add
    print(f"\nadd one product (5 photos, efficientnet-lite0) to {args.products:,} products x 5 images, HNSW graph")
    print(f"  in-process: open {t_open:.2f} s + embed/update/commit {t_add:.2f} s = {in_process:.2f} s "
          f"(model load {load_s:.2f} s not counted)  target < 2 s {verdict(in_process < 2)}")  # fmt: skip
    print(f"  baseline: prototypes + HNSW rebuilt from scratch {rebuild:.2f} s (no embedding); remove {t_remove:.2f} s")
    print(f"  CLI `edgecls catalog add` (new process: imports + model load + add) {t_cli:.2f} s "
          f"(of which python+torch imports alone {t_imports:.2f} s)  target < 2 s {verdict(t_cli < 2)}")  # fmt: skip
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {"products": args.products, "open_s": t_open, "add_s": t_add, "in_process_s": in_process,
            "model_load_s": load_s, "rebuild_baseline_s": rebuild, "remove_s": t_remove, "cli_s": t_cli,
            "imports_s": t_imports}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="catalog vectors")
    ap.add_argument("--dim", type=int, default=1280, help="vector width (lite0 and mobilenetv2: 1280)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256, help="queries per batched search")
    ap.add_argument("--dtypes", default="f16,i8", help="usearch storage types to measure (f32 builds ~3x slower)")
    ap.add_argument("--expansion", default="32,64,96,128", help="HNSW expansion_search values to measure")
    ap.add_argument("--products", type=int, default=1000, help="add-one-product: catalog size in products")
    ap.add_argument("--real", type=int, default=5000, help="Fashion-MNIST photos embedded for the real check (0: skip)")
    ap.add_argument("--skip-add", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"{os.cpu_count()} CPU(s); numpy {np.__version__}")
    real = None
    if args.real and FASHION.is_file():
        real = bench_real(args, rng)
    elif args.real:
        print(f"{FASHION} missing (apt-get install dataset-fashion-mnist): the real-embedding check is skipped")
    res = bench_search(args, rng, real.get("projection_dim") if real else None)
    if real is not None:
        res["real"] = real
    if not args.skip_add:
        res["add"] = bench_add(args, rng)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
