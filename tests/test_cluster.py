"""edgecls cluster and edgecls retrieval on real digit embeddings (a trained FP_classifier), checked against
scikit-learn computed here from the command's own outputs."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from conftest import run_cmd
from PIL import Image
from sklearn import metrics
from sklearn.neighbors import NearestNeighbors

from edgecls.cli.main import main as edgecls
from edgecls.embed.retrieval import knn_vote, nearest, retrieval_metrics
from edgecls.embed.store import Embeddings


@pytest.fixture(scope="module")
def digit_emb(trained_ckpt, digits_dir, tmp_path_factory):
    """E of the digits val/ split (~360 images, 10 classes) from the trained checkpoint, via the real CLI."""
    out = tmp_path_factory.mktemp("emb") / "E"
    r = run_cmd(["-m", "edgecls", "embed", "--model", str(trained_ckpt), str(digits_dir / "val"), "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return out


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("method", ["kmeans", "minibatch-kmeans", "birch"])
def test_cluster_metrics_equal_sklearn_on_written_assignments(method, digit_emb, tmp_path, capsys):
    out = tmp_path / method
    assert edgecls(["cluster", str(digit_emb), "--method", method, "--k", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    emb = Embeddings.load(digit_emb)
    with open(out / "clusters.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == emb.paths
    assert [r["label"] for r in rows] == emb.labels
    pred = [int(r["cluster"]) for r in rows]
    assert set(pred) <= set(range(10)) and len(set(pred)) >= 2
    want = {
        "ari": metrics.adjusted_rand_score(emb.labels, pred),
        "ami": metrics.adjusted_mutual_info_score(emb.labels, pred),
        "nmi": metrics.normalized_mutual_info_score(emb.labels, pred),
    }
    got = json.loads((out / "cluster_metrics.json").read_text())
    assert got["method"] == method and got["k"] == 10 and got["count"] == len(emb.paths) > 300
    for name, value in want.items():
        assert got["metrics"][name] == pytest.approx(value, abs=1e-12)
        assert f"{name.upper()} {value:.4f}" in printed
    assert want["nmi"] > 0.5, want  # features of a ~97% classifier group digits far better than chance
    with Image.open(out / "clusters.png") as im:
        im.verify()
    with Image.open(out / "clusters.png") as im:
        assert im.format == "PNG" and min(im.size) >= 300
    print(f"{method}: ARI {want['ari']:.4f} AMI {want['ami']:.4f} NMI {want['nmi']:.4f}")


def test_cluster_default_out_and_force(digit_emb, tmp_path, capsys):
    import shutil

    e = tmp_path / "E"
    for suffix in (".npy", ".json"):
        shutil.copy(digit_emb.with_name(digit_emb.name + suffix), e.with_name("E" + suffix))
    assert edgecls(["cluster", str(e) + ".npy", "--k", "3"]) == 0
    first = (tmp_path / "E_clusters" / "clusters.csv").read_text()
    assert edgecls(["cluster", str(e), "--k", "4"]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "E_clusters" / "clusters.csv").read_text() == first
    assert edgecls(["cluster", str(e), "--k", "4", "--force"]) == 0
    pred = [int(r["cluster"]) for r in csv.DictReader(open(tmp_path / "E_clusters" / "clusters.csv"))]
    assert max(pred) == 3


def test_cluster_without_labels_writes_no_metrics(digit_emb, tmp_path, capsys):
    emb = Embeddings.load(digit_emb)
    Embeddings(emb.vectors[:40], emb.paths[:40], [None] * 40, emb.model).save(tmp_path / "U")
    assert edgecls(["cluster", str(tmp_path / "U"), "--k", "5", "--out", str(tmp_path / "c")]) == 0
    assert "no ARI" in capsys.readouterr().out
    assert not (tmp_path / "c" / "cluster_metrics.json").exists()
    assert {r["label"] for r in csv.DictReader(open(tmp_path / "c" / "clusters.csv"))} == {""}
    assert (tmp_path / "c" / "clusters.png").is_file()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--k", "1"], "--k 1"),
        (["--k", "9999"], "--k 9999"),
        (["--k", "10", "--method", "dbscan"], "--method 'dbscan'"),
    ],
)
def test_cluster_bad_input_is_one_line(args, fragment, digit_emb, tmp_path, capsys):
    assert edgecls(["cluster", str(digit_emb), *args, "--out", str(tmp_path / "c")]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "c").exists()


def test_missing_embeddings_are_one_line_errors(tmp_path):
    for cmd in (["cluster", str(tmp_path / "nope"), "--k", "3"], ["retrieval", str(tmp_path / "nope")]):
        r = run_cmd(["-m", "edgecls", *cmd])
        assert r.returncode == 2
        assert "nope.npy: not found" in one_error_line(r.stderr)


# ----------------------------------------------------------------------------- retrieval


def independent_retrieval(vectors, labels, k=5):
    """The same metrics from sklearn's cosine neighbours and plain Python loops."""
    n = len(labels)
    nn = NearestNeighbors(n_neighbors=min(n, 11), metric="cosine", algorithm="brute").fit(vectors)
    _, idx = nn.kneighbors(vectors)
    p1, p5, aps, knn = [], [], [], []
    for q in range(n):
        ranked = [j for j in idx[q] if j != q][:10]
        relevant = sum(1 for j in range(n) if j != q and labels[j] == labels[q])
        rel = [labels[j] == labels[q] for j in ranked]
        p1.append(rel[0])
        p5.append(sum(rel[:5]) / 5)
        hits, ap = 0, 0.0
        for i, r in enumerate(rel, 1):
            if r:
                hits += 1
                ap += hits / i
        aps.append(ap / min(10, relevant))
        votes = Counter(labels[j] for j in ranked[:k])
        top = max(votes.values())
        knn.append(next(labels[j] for j in ranked[:k] if votes[labels[j]] == top) == labels[q])
    return {"p_at_1": np.mean(p1), "p_at_5": np.mean(p5), "map_at_10": np.mean(aps), "knn_accuracy": np.mean(knn)}


def test_retrieval_cli_equals_independent_computation(digit_emb, tmp_path, capsys):
    emb = Embeddings.load(digit_emb)
    out = tmp_path / "r.json"
    assert edgecls(["retrieval", str(digit_emb), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    want = independent_retrieval(emb.vectors, emb.labels, k=5)
    assert got["queries"] == len(emb.paths) and got["k"] == 5 and got["skipped"] == 0
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert f"P@1 {want['p_at_1']:.4f}" in printed and f"mAP@10 {want['map_at_10']:.4f}" in printed
    assert got["p_at_1"] > 0.8  # chance is ~0.1 with 10 balanced digits
    assert edgecls(["retrieval", str(digit_emb), "--json", str(out)]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err)
    print("retrieval:", {k: round(v, 4) for k, v in want.items()})


def test_retrieval_hand_case_equals_sklearn_average_precision():
    """With N - 1 <= 10 the whole ranking is the top 10, so AP@10 is sklearn's average_precision_score."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(11, 6)).astype(np.float32)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    aps = []
    for q in range(len(y)):
        others = np.arange(len(y)) != q
        aps.append(metrics.average_precision_score(y[others] == y[q], xn[others] @ xn[q]))
    m = retrieval_metrics(x, y, k=3)
    assert m.map_at_10 == pytest.approx(np.mean(aps), abs=1e-9)
    want = independent_retrieval(x, list(y), k=3)
    assert m.knn_accuracy == pytest.approx(want["knn_accuracy"])
    assert m.p_at_5 == pytest.approx(want["p_at_5"])


def test_nearest_chunked_equals_sklearn(digit_emb):
    v = Embeddings.load(digit_emb).vectors
    idx, sim = nearest(v, 10, chunk_bytes=4 * len(v) * 7)  # 7 rows per chunk, a ragged last one
    full, _ = nearest(v, 10)
    _, ref = NearestNeighbors(n_neighbors=11, metric="cosine", algorithm="brute").fit(v).kneighbors(v)
    assert np.array_equal(idx, full)
    assert np.array_equal(idx, ref[:, 1:]) or (idx != ref[:, 1:]).mean() < 0.01  # float ties may swap
    assert (np.diff(sim, axis=1) <= 1e-7).all() and (idx != np.arange(len(v))[:, None]).all()


def test_knn_vote_ties_go_to_the_nearest():
    assert knn_vote(np.array([[1, 2], [2, 1], [0, 1], [3, 3]]), 4).tolist() == [1, 2, 0, 3]
    assert knn_vote(np.array([[0, 1, 1, 0, 2]]), 3).tolist() == [0]  # 0 and 1 tie at 2 votes; 0 is nearest
    assert knn_vote(np.array([[2, 1, 1, 2, 0]]), 3).tolist() == [2]
    assert knn_vote(np.array([[2, 1, 1, 0, 0]]), 3).tolist() == [1]  # 1 and 0 tie; 1 comes first


def test_single_image_classes_and_unlabelled_are_left_out(digit_emb, tmp_path, capsys):
    emb = Embeddings.load(digit_emb)
    keep = [i for i, lab in enumerate(emb.labels) if lab != "9"] + [emb.labels.index("9")]
    labels = [emb.labels[i] for i in keep]
    labels[:5] = [None] * 5
    Embeddings(emb.vectors[keep], [emb.paths[i] for i in keep], labels, emb.model).save(tmp_path / "S")
    assert edgecls(["retrieval", str(tmp_path / "S"), "--json", str(tmp_path / "s.json")]) == 0
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["skipped"] == 1 and got["unlabelled"] == 5 and got["queries"] == len(keep) - 6
    assert "1 in one-image classes, 5 unlabelled" in capsys.readouterr().out
    Embeddings(emb.vectors[:4], emb.paths[:4], [None] * 4, emb.model).save(tmp_path / "U")
    assert edgecls(["retrieval", str(tmp_path / "U")]) == 2
    assert "no labels" in one_error_line(capsys.readouterr().err)
