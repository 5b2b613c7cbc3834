"""Packed shards (`edgecls data pack`): the tars and their index, training, eval and inference from them,
streaming whole shards (seeded, resumable, refused when too few), a pack resumed after SIGKILL."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, copy_digits, requires_gloo, run_cmd, torchrun_train

from edgecls.data.shards.index import load_index, scan_shards
from edgecls.data.tools.pack import JOURNAL, PackConfig, pack_dataset
from edgecls.engine.callbacks import Callback
from edgecls.engine.config import TrainConfig

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_topk"]


def pack(src: Path, out: Path, **kw) -> dict:
    return pack_dataset(PackConfig(dir=str(src), out=str(out), **kw), log=lambda message: None)


def train_config(data: Path, run: Path, **kw) -> TrainConfig:
    settings = dict(
        data=str(data), backbone="FP_classifier", input_size=(32, 32), epochs=2, batch_size=16, optimizer="ADAMW",
        lr=3e-3, hflip=0.0, crop_scale=0.8, workers=0, snapshot_path=str(run), model_def_path=None, seed=0,
    )  # fmt: skip
    return TrainConfig(**{**settings, **kw})


def summary(run: Path) -> list[dict]:
    with (run / "summary.csv").open(newline="") as fh:
        return [{k: row[k] for k in METRICS} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def small(digits_dir, tmp_path_factory) -> Path:
    """Digits 0-3: 24 train and 8 val real images per class."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("shards") / "data")


@pytest.fixture(scope="module")
def packed(small, tmp_path_factory) -> Path:
    """`small` in shards of about 12 kB: 16 train and 6 val shards of about 6 images."""
    out = tmp_path_factory.mktemp("packed") / "shards"
    pack(small, out, shard_size=12_000, workers=2)
    return out


@pytest.fixture(scope="module")
def folder_run(small, tmp_path_factory) -> Path:
    """A seeded 2-epoch run on the folder (decoded-image cache in RAM, the CPU default)."""
    from edgecls.engine.trainer import fit

    run = tmp_path_factory.mktemp("folder_run") / "run"
    fit(train_config(small, run))
    return run


def test_pack_writes_webdataset_tars_and_an_index(small, packed):
    import webdataset as wds

    index = load_index(packed)
    assert index["format"] == "edgecls-shards/1" and index["classes"] == ["0", "1", "2", "3"]
    assert index["image_size"] is None and index["bad_files"] == 0
    train = index["splits"]["train"]
    assert train["count"] == 96 and train["class_counts"] == [24, 24, 24, 24] and index["splits"]["val"]["count"] == 32
    assert len(train["shards"]) >= 8  # 12 kB each: the shard size was honoured
    for entry in index["splits"].values():
        for shard in entry["shards"]:
            data = (packed / shard["file"]).read_bytes()
            assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
    # any WebDataset reader opens them: every image once, with its class id and its own bytes
    urls = [str(packed / s["file"]) for s in train["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        seen[sample["__key__"]] = (int(sample["cls"]), sample["png"])
    assert len(seen) == 96
    for key, (label, data) in seen.items():
        assert (small / "train" / (key + ".png")).read_bytes() == data
        assert index["classes"][label] == key.split("/")[0]
    # shuffled over the shards: the first shard holds several classes; positions keep the folder's order
    assert len({label for label, *_ in train["shards"][0]["samples"]}) > 1
    assert sorted(pos for s in train["shards"] for pos, *_ in s["samples"]) == list(range(96))


def test_a_shard_folder_scans_like_the_folder_it_was_packed_from(small, packed):
    from edgecls.data.folder import scan_dataset
    from edgecls.data.images import load_rgb

    classes, folder = scan_dataset(small)
    shard_classes, shards = scan_shards(packed)
    assert shard_classes == classes
    for name in ("train", "val"):
        a, b = folder[name].samples, shards[name].samples
        assert [label for _, label in a] == [label for _, label in b]
        assert [Path(p).name for p, _ in a] == [m.name.split("/")[-1] for m, _ in b]
        assert load_rgb(b[5][0]).tobytes() == load_rgb(a[5][0]).tobytes()


def test_bad_images_are_reported_at_pack_time_and_left_out(small, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small, data)
    bad = data / "train" / "2" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (data / "val" / "1" / "empty.png").write_bytes(b"")
    out = tmp_path / "shards"
    result = pack_dataset(PackConfig(dir=str(data), out=str(out), shard_size=50_000))
    printed = capsys.readouterr().out
    assert f"warning: skipped 2 unreadable file(s) (listed in {out / 'bad_files.txt'})" in printed
    assert str(bad) in printed and str(bad) in (out / "bad_files.txt").read_text()
    assert result["index"]["bad_files"] == 2
    assert result["index"]["splits"]["train"]["count"] == 96 and result["index"]["splits"]["val"]["count"] == 32


def test_pack_refuses_to_overwrite_without_force(small, tmp_path, capsys):
    from edgecls.cli.data import cli

    out = tmp_path / "shards"
    assert cli(["pack", str(small), "--out", str(out), "--shard-size", "50KB"]) == 0
    before = (out / "index.json").read_bytes()
    capsys.readouterr()
    assert cli(["pack", str(small), "--out", str(out)]) == 2  # a finished shard set
    assert "already holds a shard set" in capsys.readouterr().err
    assert (out / "index.json").read_bytes() == before
    assert cli(["pack", str(small), "--out", str(out), "--shard-size", "20KB", "--force"]) == 0
    assert load_index(out)["shard_size"] == 20_000
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no journal, no temp file

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli(["pack", str(small), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "--force" in err  # field names rendered as flags
    assert cli(["pack", str(small), "--out", str(other), "--force"]) == 0
    assert (other / "notes.txt").read_text() == "mine"  # --force replaces only a pack's own files
    assert cli(["pack", str(small), "--out", str(small / "train" / "packed")]) == 2  # never inside a split


def test_pack_resumes_after_sigkill_keeping_the_finished_shards(digits_dir, tmp_path):
    data = copy_digits(digits_dir, tmp_path / "data", digits="0123456789", n_train=60, n_val=16)
    out = tmp_path / "shards"
    args = ["-m", "edgecls", "data", "pack", str(data), "--out", str(out), "--shard-size", "40KB"]
    args += ["--resize-to", "96x96", "--workers", "1"]  # resized: slow enough to be killed half-way
    env = dict(os.environ, PYTHONPATH=str(REPO), **ENV)
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / JOURNAL
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count("\n") >= 4:  # the header and 3 finished shards
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the pack ended before it could be killed; give it more images"
    assert not (out / "index.json").exists()
    kept = set()
    for line in journal.read_text().splitlines()[1:]:
        try:
            kept.add(json.loads(line)["shard"]["file"])
        except json.JSONDecodeError:
            pass  # the line the kill cut short
    assert kept
    stamps = {f: (out / f).stat().st_mtime_ns for f in kept}

    r = run_cmd(args, env=ENV)
    assert r.returncode == 0, r.stderr
    assert f"{len(kept)} shards kept from the interrupted pack" in r.stdout
    assert all((out / f).stat().st_mtime_ns == stamps[f] for f in kept)  # not written again
    assert not journal.exists() and not list(out.glob(".tmp-*"))
    # the result is the pack an uninterrupted run writes, byte for byte (two processes this time)
    fresh = tmp_path / "fresh"
    r = run_cmd([*args[:6], str(fresh), *args[7:-1], "2"], env=ENV)
    assert r.returncode == 0, r.stderr
    assert (out / "index.json").read_text() == (fresh / "index.json").read_text()
    index = load_index(out)
    assert index["splits"]["train"]["count"] == 600 and index["image_size"] == {"height": 96, "width": 96}


def test_training_from_shards_matches_the_folder(packed, folder_run, tmp_path):
    from edgecls.engine.trainer import fit

    result = fit(train_config(packed, tmp_path / "run"))
    assert summary(tmp_path / "run") == summary(folder_run)  # same seed, same rows, same metrics
    assert result.classes == ["0", "1", "2", "3"]
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert timings["cache"] == "ram" and timings["train_images"] == 96


class StopAfter(Callback):
    """Ends a run after `epochs` epochs, as an interruption would (the next epoch's state is in last.pth)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, run, metrics: dict) -> None:
        if metrics["epoch"] >= self.epochs:
            run.stop(f"stopped after epoch {self.epochs} by the test")


@pytest.mark.parametrize("augment", ["none", "light"])  # light: colour jitter drawn in the stream's workers
def test_streamed_shards_are_seeded_and_resume_exactly(packed, tmp_path, augment):
    from edgecls.engine.trainer import fit, resume

    cfg = dict(cache_images="none", workers=2, epochs=3, hflip=0.5, augment=augment)
    straight = tmp_path / "straight"
    fit(train_config(packed, straight, **cfg))
    timings = json.loads((straight / "timings.json").read_text())
    assert timings["shards_streamed"] and timings["cache"] == "none"
    interrupted = tmp_path / "interrupted"
    fit(train_config(packed, interrupted, **cfg), callbacks=[StopAfter(2)])
    assert len(summary(interrupted)) == 2
    resume(interrupted)
    assert summary(interrupted) == summary(straight)
    rows = summary(straight)
    # It learns: the val loss, measured without augmentation or dropout, falls (the train loss of three
    # epochs of 96 flipped and cropped images is too noisy to compare).
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])


def test_streaming_refuses_fewer_shards_than_workers(small, tmp_path, capsys):
    from edgecls.cli.train import cli

    one = tmp_path / "one"
    pack(small, one)  # 100 MB shards: one per split
    assert len(load_index(one)["splits"]["train"]["shards"]) == 1
    run = tmp_path / "run"
    argv = [str(one), "--backbone", "FP_classifier", "--input-size", "32", "--epochs", "1", "--model-def-path", ""]
    assert cli([*argv, "--cache-images", "none", "--workers", "2", "--snapshot-path", str(run)]) == 2
    err = capsys.readouterr().err
    assert "1 training shard(s) for 2 DataLoader worker(s)" in err and "--workers" in err and "--shard-size" in err
    assert len(err.strip().splitlines()) == 1
    assert not run.exists()  # a failed start writes nothing
    # with a cache the rows are random access: the same shard set trains
    assert cli([*argv, "--cache-images", "ram", "--workers", "2", "--snapshot-path", str(run)]) == 0


def test_eval_and_inference_read_shards(packed, small, folder_run, tmp_path):
    ckpt = str(folder_run / "best.pth")
    results = {}
    for name, data in (("folder", small), ("shards", packed)):
        save = tmp_path / name
        r = run_cmd(["eval_utils/eval.py", "--snapshot", ckpt, "--data-dir", str(data), "--save-dir", str(save)])
        assert r.returncode == 0, r.stderr
        results[name] = json.loads((save / "eval_results.json").read_text())
    for figure in ("topk", "accuracy", "macro", "confusion_matrix", "num_images"):
        assert results["shards"][figure] == results["folder"][figure], figure
    assert results["shards"]["num_images"] == 32

    shard = sorted(packed.glob("val-*.tar"))[0]
    out = tmp_path / "preds"
    r = run_cmd(["inference.py", "--snapshot", ckpt, "--img-path", str(shard), "--save-path", str(out)])
    assert r.returncode == 0, r.stderr
    with (out / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    count = next(s["count"] for s in load_index(packed)["splits"]["val"]["shards"] if s["file"] == shard.name)
    assert len(rows) == count and all(row["img_path"].startswith(f"{shard}/") and not row["error"] for row in rows)
    record = json.loads((out / rows[0]["json_file"]).read_text())
    assert record["img_path"] == rows[0]["img_path"] and record["0_0"][0][1] in ("0", "1", "2", "3")


@requires_gloo
def test_ddp_streams_whole_shards_each_image_once_per_epoch(packed, tmp_path):
    """torchrun, 2 gloo processes x 1 worker, streamed: an audit hook records every tar each process opens."""
    hook_dir, audit_dir, run = tmp_path / "hook", tmp_path / "audit", tmp_path / "run"
    audit_dir.mkdir()
    args = [str(packed), "--backbone", "FP_classifier", "--input-size", "32", "--batch-size", "8", "--epochs", "2"]
    args += ["--cache-images", "none", "--workers", "1", "--early-stop", "0", "--model-def-path", ""]
    args += ["--bn-recalibrate", "0"]  # its pass reads a fixed subset by byte range, not the epoch's stream
    env = dict(ENV, EDGECLS_TEST_AUDIT_DIR=str(audit_dir))
    proc = torchrun_train([*args, "--snapshot-path", str(run)], hook_dir, AUDIT_HOOK, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["epoch"] for r in summary(run)] == ["1", "2"]

    index = load_index(packed)
    train = {s["file"] for s in index["splits"]["train"]["shards"]}
    epochs: dict[str, list[list[str]]] = {"0": [], "1": []}  # rank -> the train shards each worker read
    for log in sorted(audit_dir.glob("rank*.txt"), key=lambda f: float(f.read_text().split()[0])):
        opened = [Path(line.split()[1]).name for line in log.read_text().splitlines()]
        if any(name.startswith("train-") for name in opened):
            epochs[log.name.split("-")[0][4:]].append(opened)
    assert [len(v) for v in epochs.values()] == [2, 2]  # one DataLoader worker per rank per epoch
    for e in range(2):
        rank0, rank1 = epochs["0"][e], epochs["1"][e]
        assert len(rank0) == len(set(rank0)) and len(rank1) == len(set(rank1))  # each shard read once
        assert not set(rank0) & set(rank1) and set(rank0) | set(rank1) == train  # whole shards, every one
    assert epochs["0"][0] != epochs["0"][1]  # each epoch deals the shards anew (seeded)
    images = {s["file"]: s["count"] for s in index["splits"]["train"]["shards"]}
    seen = [sum(images[f] for f in epochs["0"][e] + epochs["1"][e]) for e in range(2)]
    assert seen == [96, 96]  # and Rebatch checks each shard gave all its images: each image once per epoch


AUDIT_HOOK = """
import os, sys, time
_log_dir = os.environ.get("EDGECLS_TEST_AUDIT_DIR")
if _log_dir and "RANK" in os.environ:
    def _hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].endswith(".tar"):
            # per process: a DataLoader worker is a fork of its rank's process
            path = os.path.join(_log_dir, "rank%s-pid%d.txt" % (os.environ["RANK"], os.getpid()))
            with open(path, "a") as fh:
                fh.write("%f %s\\n" % (time.time(), args[0]))

    sys.addaudithook(_hook)
"""
