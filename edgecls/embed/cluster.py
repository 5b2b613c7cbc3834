"""Clustering of embeddings (scikit-learn KMeans, MiniBatchKMeans, Birch), its agreement with the true labels
(ARI, AMI, NMI) and a 2-D PCA scatter coloured by cluster with the true label as the marker."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from edgecls.atomic import atomic_savefig, atomic_write_text
from edgecls.errors import UserError

METHODS = ("kmeans", "minibatch-kmeans", "birch")
OUTPUTS = ("clusters.csv", "cluster_metrics.json", "clusters.png")
MARKERS = "o^sDv<>pP*Xh8d"


def check_k(k: int, n: int) -> None:
    if k < 2:
        raise UserError(f"`k` {k}: must be at least 2 clusters")
    if k > n:
        raise UserError(f"`k` {k}: more clusters than the {n} embeddings; choose k between 2 and {n}")


def cluster_vectors(vectors: np.ndarray, method: str, k: int, seed: int = 0) -> np.ndarray:
    """Cluster id (0..k-1) per row. Birch(n_clusters=k) may find fewer than k clusters on tight data."""
    import warnings

    from sklearn.cluster import Birch, KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    if method not in METHODS:
        raise UserError(f"`method` {method!r}: choose one of {', '.join(METHODS)}")
    check_k(k, len(vectors))
    x = np.asarray(vectors, dtype=np.float32)
    if method == "kmeans":
        model = KMeans(n_clusters=k, n_init="auto", random_state=seed)
    elif method == "minibatch-kmeans":
        model = MiniBatchKMeans(n_clusters=k, n_init="auto", random_state=seed)
    else:
        model = Birch(n_clusters=k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points / fewer subclusters than k
        return np.asarray(model.fit_predict(x), dtype=np.int64)


def cluster_metrics(true: list, clusters: np.ndarray) -> dict:
    """Adjusted Rand index, adjusted mutual information and NMI of the clusters against the true labels."""
    from sklearn import metrics

    return {
        "ari": float(metrics.adjusted_rand_score(true, clusters)),
        "ami": float(metrics.adjusted_mutual_info_score(true, clusters)),
        "nmi": float(metrics.normalized_mutual_info_score(true, clusters)),
    }


def default_out(embeddings: str | Path) -> Path:
    """E_clusters/ next to E (E given as E, E.npy or E.json)."""
    p = Path(embeddings)
    base = p.with_suffix("") if p.suffix.lower() in (".npy", ".json") else p
    return base.with_name(base.name + "_clusters")


def check_out(out: Path, force: bool) -> None:
    """Refuse an output folder that already holds clustering results, unless `force`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out}: is a file; give a folder for the clustering results")
    there = [name for name in OUTPUTS if (out / name).exists()]
    if there and not force:
        held = ", ".join(there)
        raise UserError(f"`out` {out}: already holds {held}; pass `force` to replace them or choose another folder")


def write_clusters_csv(path: Path, paths: list[str], clusters: np.ndarray, labels: list[str | None]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "cluster", "label"])
    for p, c, lab in zip(paths, clusters, labels):
        w.writerow([p, int(c), "" if lab is None else lab])
    atomic_write_text(buf.getvalue(), path)


def scatter_png(vectors: np.ndarray, clusters: np.ndarray, labels: list[str | None], path: Path, title: str) -> None:
    """PCA to 2-D; colour = cluster, marker = true label (cycled past 14 labels; 'x' when unknown)."""
    from sklearn.decomposition import PCA

    from edgecls.evaluation import pyplot

    plt = pyplot()
    x = np.asarray(vectors, dtype=np.float32)
    xy = PCA(n_components=min(2, *x.shape), random_state=0).fit_transform(x)
    if xy.shape[1] < 2:  # 1-d vectors: plot them on a line
        xy = np.c_[xy, np.zeros(len(xy))]
    cmap = plt.get_cmap("tab20" if clusters.max() >= 10 else "tab10")
    colours = cmap(clusters % cmap.N)
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    classes = sorted({lab for lab in labels if lab is not None})
    groups = [(c, MARKERS[i % len(MARKERS)]) for i, c in enumerate(classes)] + [(None, "x")]
    lab_arr = np.asarray(["\0" if lab is None else lab for lab in labels], dtype=object)
    for cls, marker in groups:
        sel = lab_arr == ("\0" if cls is None else cls)
        if sel.any():
            shown = "unlabelled" if cls is None else cls
            ax.scatter(xy[sel, 0], xy[sel, 1], c=colours[sel], marker=marker, s=18, linewidths=0.6, label=shown)
    if classes and len(groups) <= 31:
        leg = ax.legend(title="true label (marker)", fontsize=7, title_fontsize=8, loc="best", markerscale=1.2)
        for handle in leg.legend_handles:
            handle.set_color("0.3")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=10)
    atomic_savefig(fig, path)


def run_clustering(emb, method: str, k: int, out: Path, seed: int = 0, force: bool = False, title: str = "") -> dict:
    """Cluster an Embeddings, write out/clusters.csv, out/clusters.png and (labels known) cluster_metrics.json.

    Returns {"method", "k", "count", "clusters_found", "labelled", "metrics" (None without labels), "files"}."""
    if method not in METHODS:
        raise UserError(f"`method` {method!r}: choose one of {', '.join(METHODS)}")
    check_k(k, len(emb.paths))
    check_out(out, force)
    clusters = cluster_vectors(emb.vectors, method, k, seed)
    known = [i for i, lab in enumerate(emb.labels) if lab is not None]
    result = {
        "method": method,
        "k": k,
        "seed": seed,
        "count": len(emb.paths),
        "clusters_found": int(len(np.unique(clusters))),
        "labelled": len(known),
        "metrics": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "clusters.csv", out / "clusters.png"]
    write_clusters_csv(files[0], emb.paths, clusters, emb.labels)
    if known:
        result["metrics"] = cluster_metrics([emb.labels[i] for i in known], clusters[known])
        files.append(out / "cluster_metrics.json")
        atomic_write_text(json.dumps(result, indent=1) + "\n", files[-1])
    elif (out / "cluster_metrics.json").exists():
        (out / "cluster_metrics.json").unlink()  # `force` given (check_out): no stale metrics beside new clusters
    scatter_png(emb.vectors, clusters, emb.labels, files[1], title or f"{method}, k={k}, {len(emb.paths)} embeddings")
    result["files"] = [str(f) for f in files]
    return result
