"""The persistent decoded-image cache (`--cache-dir`, `--cache-limit`): reused by later runs in every cache
mode, invalidated by a changed file, built once when two processes start at once, bounded (least recently
used entries removed), kept by the gpu fill for the next run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, copy_digits

from edgecls.data.cache import decoded, gpu
from edgecls.data.cache.store import CacheStore
from edgecls.data.cache.train_decoder import TrainDecoder
from edgecls.data.presets import Preprocess
from edgecls.errors import UserError

quiet = lambda message: None  # noqa: E731


@pytest.fixture()
def data(digits_dir, tmp_path) -> Path:
    return copy_digits(digits_dir, tmp_path / "data")


def paths_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.png"))


def test_ram_and_disk_modes_reuse_an_entry_and_a_changed_file_invalidates_it(data, tmp_path):
    store = CacheStore(tmp_path / "cache", log=quiet)
    paths = paths_of(data / "train")
    dec = TrainDecoder((36, 36))
    logs: list[str] = []
    ram = decoded.load_or_build(paths, dec, "ram", log=logs.append, store=store)
    assert ram.mode == "ram" and not store.entries()  # ram writes nothing
    disk = decoded.load_or_build(paths, dec, "disk", log=logs.append, store=store)
    assert [e[0] for e in store.entries()] == [disk.path.parent.name]
    assert np.array_equal(np.asarray(disk.pixels), ram.pixels)
    again = decoded.load_or_build(paths, dec, "ram", log=logs.append, store=store)  # ram starts from the entry
    assert isinstance(again.pixels, np.memmap) and again.path == disk.path
    assert [m.split()[0] for m in logs] == ["caching", "caching", "reusing"]

    time.sleep(0.01)
    shutil.copyfile(paths[-1], paths[0])  # one file changed: new size and mtime, so a new key
    rebuilt = decoded.load_or_build(paths, dec, "disk", log=logs.append, store=store)
    assert logs[-1].startswith("caching") and rebuilt.path != disk.path
    assert np.array_equal(rebuilt.pixels[0], rebuilt.pixels[-1])


def test_a_repacked_shard_invalidates_the_cache_of_its_members(data, tmp_path):
    from edgecls.data.shards.index import scan_shards
    from edgecls.data.tools.pack import PackConfig, pack_dataset

    shards = tmp_path / "shards"
    pack_dataset(PackConfig(dir=str(data), out=str(shards), shard_size=20_000), log=quiet)
    store = CacheStore(tmp_path / "cache", log=quiet)
    dec = decoded.EvalDecoder(Preprocess((32, 32), preset="unit"))
    members = [m for m, _ in scan_shards(shards)[1]["val"].samples]
    first = decoded.load_or_build(members, dec, "disk", log=quiet, store=store)
    assert len(members) == len(paths_of(data / "val")) == 32
    same = decoded.load_or_build(members, dec, "disk", log=quiet, store=store)
    assert same.path == first.path
    time.sleep(0.01)
    target = sorted((data / "val").rglob("*.png"))[0]
    shutil.copyfile(sorted((data / "val").rglob("*.png"))[-1], target)
    pack_dataset(PackConfig(dir=str(data), out=str(shards), shard_size=20_000, force=True), log=quiet)
    members = [m for m, _ in scan_shards(shards)[1]["val"].samples]
    logs: list[str] = []
    changed = decoded.load_or_build(members, dec, "disk", log=logs.append, store=store)
    assert logs[0].startswith("caching") and changed.path != first.path


CONCURRENT = """
import hashlib, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from edgecls.data.cache import decoded
from edgecls.data.cache.store import CacheStore
from edgecls.data.cache.train_decoder import TrainDecoder
paths = sorted(str(p) for p in Path({data!r}).rglob("*.png"))
store = CacheStore({cache!r}, log=print)
Path({ready!r} + str(os.getpid())).write_text("")
while not os.path.exists({go!r}):
    time.sleep(0.001)
images = decoded.load_or_build(paths, TrainDecoder((40, 40)), "disk", workers=1, log=print, store=store)
print("sha", hashlib.sha1(images.pixels.tobytes()).hexdigest(), flush=True)
"""


def test_two_processes_starting_at_once_decode_once(digits_dir, tmp_path):
    """Both wait at a barrier, then ask for the same entry in the same instant: one decodes, one waits and maps."""
    cache, ready, go = tmp_path / "cache", tmp_path / "ready-", tmp_path / "go"
    script = CONCURRENT.format(
        repo=str(REPO), data=str(digits_dir / "train"), cache=str(cache), ready=str(ready), go=str(go)
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    deadline = time.time() + 300
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.write_text("")
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    text = [out for out, _ in outs]
    assert sum(t.count("caching") for t in text) == 1  # one decode for both
    assert sum(t.count("reusing") for t in text) == 1
    assert len({line for t in text for line in t.splitlines() if line.startswith("sha")}) == 1  # the same rows
    entries = CacheStore(cache).entries()
    assert len(entries) == 1 and not list(cache.glob(".building-*"))


def test_two_train_runs_started_together_share_the_cache(data, tmp_path):
    common = [str(REPO / "train.py"), str(data), "--backbone", "FP_classifier", "--input-size", "32"]
    common += ["--epochs", "1", "--batch-size", "16", "--workers", "0", "--model-def-path", "", "--seed", "0"]
    common += ["--cache-images", "disk", "--cache-dir", str(tmp_path / "cache"), "--crop-scale", "0.8"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, *common, "--snapshot-path", str(tmp_path / f"run{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    text = "".join(out for out, _ in outs)
    assert text.count("caching") == 2 and text.count("reusing") == 2  # train + val entries, each decoded once
    assert "image cache folder" in text and "2 entries" in text  # its size printed
    assert len(CacheStore(tmp_path / "cache").entries()) == 2
    metrics = [(tmp_path / f"run{i}" / "summary.csv").read_text().splitlines()[1].split(",")[:6] for i in range(2)]
    assert metrics[0] == metrics[1]


def test_cache_limit_removes_the_least_recently_used_entries(data, tmp_path):
    dec = TrainDecoder((36, 36))
    per_entry = 24 * 36 * 36 * 3 + 10_000  # one class's rows, plus the sizes file and headers
    store = CacheStore(tmp_path / "cache", limit=int(2.5 * per_entry), log=quiet)
    keys = []
    for digit in "012":
        images = decoded.load_or_build(paths_of(data / "train" / digit), dec, "disk", log=quiet, store=store)
        keys.append(images.path.parent.name)
        store.in_use.clear()  # as if each were another run's
        time.sleep(0.02)
    assert {k for k, _, _ in store.entries()} == {keys[1], keys[2]}  # 0, least recently used, made room for 2
    decoded.load_or_build(paths_of(data / "train" / "1"), dec, "ram", log=quiet, store=store)  # 1 used again
    store.in_use.clear()
    time.sleep(0.02)
    logs: list[str] = []
    store.log = logs.append
    third = decoded.load_or_build(paths_of(data / "train" / "3"), dec, "disk", log=quiet, store=store)
    assert {k for k, _, _ in store.entries()} == {keys[1], third.path.parent.name}  # 2 went: 1 was used since
    assert any("least recently used" in m for m in logs)
    assert "2 entries" in store.describe() and "limit" in store.describe()
    with pytest.raises(UserError, match="over `cache_limit`"):
        decoded.load_or_build(paths_of(data / "train"), dec, "disk", log=quiet, store=store)


def test_an_interrupted_build_leaves_no_entry_and_is_cleaned_up(data, tmp_path):
    store = CacheStore(tmp_path / "cache", log=quiet)
    paths = paths_of(data / "val")
    with open(paths[3], "r+b") as fh:
        fh.truncate(30)  # broken after the scan: the build fails half-way
    with pytest.raises(UserError, match=os.path.basename(paths[3])):
        decoded.load_or_build(paths, TrainDecoder((36, 36)), "disk", log=quiet, store=store)
    assert store.entries() == [] and not list(store.root.glob(".building-*"))
    (store.root / ".building-0123456789abcdef01234567-deadbeef").mkdir()  # a killed run's
    store.make_room(0)
    assert not list(store.root.glob(".building-*"))


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[str]:
    """12 real photo crops as baseline JPEGs (nvjpeg's kind) and 2 PNGs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = tmp_path_factory.mktemp("jpegs")
    china, flower = load_sample_images().images
    for i in range(14):
        photo = china if i % 2 else flower
        crop = Image.fromarray(photo[i * 10 : i * 10 + 240, i * 15 : i * 15 + 320])
        crop.save(out / f"p{i:02d}.{'png' if i >= 12 else 'jpg'}", quality=90)
    return sorted(str(p) for p in out.iterdir())


def test_gpu_fill_keeps_its_rows_and_the_next_run_uploads_them(jpegs, tmp_path):
    """The gpu cache on a CPU device (the same DeviceFill): the first run fills and keeps, the next decodes nothing."""
    store = CacheStore(tmp_path / "cache", log=quiet)
    dec = TrainDecoder((48, 64))
    cpu = torch.device("cpu")
    logs: list[str] = []
    first = gpu.build_on_device(
        jpegs, dec, cpu, order=torch.randperm(len(jpegs)), stream=True, log=logs.append, store=store
    )
    first.fill.join()
    first.fill.saver.join()  # the background copy into the cache folder
    assert any(m.startswith("  train cache kept in") for m in logs)
    [(key, _, _)] = store.entries()
    meta = json.loads((store.entry(key) / "meta.json").read_text())
    assert meta["kept_by"] == "gpu fill" and meta["count"] == len(jpegs)

    logs.clear()
    second = gpu.build_on_device(jpegs, dec, cpu, stream=True, log=logs.append, store=store)
    assert second.fill is None and logs[0].startswith("reusing")  # no fill: uploaded from the kept rows
    assert torch.equal(second.pixels, first.pixels) and np.array_equal(second.orig_sizes, first.orig_sizes)


def test_gpu_mode_starts_from_a_disk_mode_entry(jpegs, tmp_path):
    store = CacheStore(tmp_path / "cache", log=quiet)
    dec = TrainDecoder((48, 64))
    built = decoded.load_or_build(jpegs, dec, "disk", log=quiet, store=store)  # a CPU run's cache (PIL rows)
    logs: list[str] = []
    images = gpu.build_on_device(jpegs, dec, torch.device("cpu"), stream=True, log=logs.append, store=store)
    assert images.fill is None and logs[0].startswith("reusing")
    assert np.array_equal(images.pixels.numpy(), np.asarray(built.pixels))
