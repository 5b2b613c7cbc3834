"""Decoded-image cache: exact eval tensors, reuse and rebuild on change, crop/flip geometry, training with it."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecls.data.cache import augment as ic_augment
from edgecls.data.cache import decoded as ic_decoded
from edgecls.data.cache import loader as ic_loader
from edgecls.data.cache import policy as ic_policy
from edgecls.data.cache.train_decoder import TrainDecoder
from edgecls.data.folder import FolderDataset, scan_dataset
from edgecls.data.presets import Preprocess
from edgecls.errors import UserError


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


@pytest.fixture(scope="module")
def val_samples(digits_dir):
    _, splits = scan_dataset(digits_dir)
    return splits["val"].samples


@pytest.mark.parametrize("mode", ["ram", "disk"])
@pytest.mark.parametrize(
    "pre",
    [
        Preprocess((56, 32), preset="kneron"),
        Preprocess((40, 40), preset="imagenet", resize="center_crop", interpolation="bicubic"),
    ],
    ids=["squash-kneron", "center_crop-imagenet"],
)
def test_cached_eval_batches_equal_uncached_eval_path(val_samples, cache_dir, mode, pre):
    paths, labels = [p for p, _ in val_samples], [lbl for _, lbl in val_samples]
    images = ic_decoded.load_or_build(paths, ic_decoded.EvalDecoder(pre), mode, workers=1, log=lambda m: None)
    loader = ic_loader.CachedLoader(ic_loader.CachedSet(images, labels), 50, torch.device("cpu"), preprocess=pre)
    got = torch.cat([x for x, _ in loader])
    got_labels = torch.cat([y for _, y in loader])
    ref = FolderDataset(val_samples, pre)
    want = torch.stack([ref[i][0] for i in range(len(ref))])
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want)  # bit-identical, not merely close
    assert got_labels.tolist() == labels


def test_disk_cache_is_reused_and_rebuilt_when_a_file_changes(digits_dir, tmp_path, cache_dir):
    data = tmp_path / "data"
    shutil.copytree(digits_dir / "val", data)
    paths = sorted(str(p) for p in data.rglob("*.png"))
    pre = Preprocess((32, 32), preset="unit")
    dec = ic_decoded.EvalDecoder(pre)
    logs: list[str] = []
    first = ic_decoded.load_or_build(paths, dec, "disk", workers=2, log=logs.append)
    assert first.mode == "disk" and first.path.parent.parent == cache_dir and len(logs) == 1
    assert not any(".tmp" in n or ".building" in n for n in os.listdir(cache_dir))  # no temp file left
    again = ic_decoded.load_or_build(paths, dec, "disk", workers=2, log=logs.append)
    assert again.path == first.path and len(logs) == 2 and logs[1].startswith("reusing")  # no second decode
    assert np.array_equal(np.asarray(again.pixels), np.asarray(first.pixels))

    # replace one image with another (new size + mtime): a new key, rebuilt, new pixels
    target, other = paths[0], paths[-1]
    time.sleep(0.01)
    shutil.copyfile(other, target)
    os.utime(target, ns=(time.time_ns(), time.time_ns()))
    rebuilt = ic_decoded.load_or_build(paths, dec, "disk", workers=1, log=logs.append)
    assert len(logs) == 3 and logs[2].startswith("caching") and rebuilt.path != first.path
    assert np.array_equal(rebuilt.pixels[0], rebuilt.pixels[-1])
    assert not np.array_equal(rebuilt.pixels[0], first.pixels[0])


def test_file_broken_after_scan_is_a_user_error_naming_it(digits_dir, tmp_path, cache_dir):
    data = tmp_path / "data"
    shutil.copytree(digits_dir / "val" / "3", data)
    paths = sorted(str(p) for p in data.glob("*.png"))
    with open(paths[2], "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(UserError, match=os.path.basename(paths[2])):
        ic_decoded.load_or_build(paths, TrainDecoder((40, 40)), "ram", workers=1, log=lambda m: None)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    with pytest.raises(UserError, match="`cache_images` none"):
        ic_decoded.load_or_build(paths, TrainDecoder((40, 40)), "disk", workers=1, log=lambda m: None)
    assert [p.name for p in cache_dir.iterdir() if p.suffix != ".lock"] == []  # no half-built entry left


def test_train_decoder_draft_decodes_jpeg_and_reports_upright_original_size(digits_dir, tmp_path):
    src = next((digits_dir / "train" / "7").glob("*.png"))
    big = Image.open(src).convert("RGB").resize((640, 480), Image.BILINEAR)
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "rotated.jpg"
    big.save(plain, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    big.save(rotated, quality=95, exif=exif)
    dec = TrainDecoder((70, 70))
    pixels, size = dec(str(plain))
    assert pixels.shape == (70, 70, 3) and pixels.dtype == np.uint8 and size == (640, 480)
    full = np.asarray(big.resize((70, 70), Image.BILINEAR), np.float32)
    assert np.abs(pixels.astype(np.float32) - full).mean() < 6  # draft decode looks like the full decode
    pixels_r, size_r = dec(str(rotated))
    assert size_r == (480, 640)  # upright: portrait


def test_batch_augment_boxes_follow_train_transform_rules():
    """The batched crops and TrainTransform share one sampler: area in [crop_scale, 1] of the original, and
    the aspect evaluation shows the model (the image's own under squash, the output's under center_crop)."""
    sizes = torch.tensor([[500, 375]] * 2000 + [[100, 400]] * 2000, dtype=torch.int32)
    tall = sizes[:, 1] > sizes[:, 0]
    image_ratio = sizes[:, 0].double() / sizes[:, 1].double()
    for resize, target in (("squash", image_ratio), ("center_crop", torch.ones(len(sizes), dtype=torch.float64))):
        pre = Preprocess((224, 224), preset="imagenet", resize=resize)
        aug = ic_augment.BatchAugment(pre, hflip=0.5, crop_scale=0.6)
        boxes = aug.boxes(sizes, torch.Generator().manual_seed(0))
        x0, y0, w, h = boxes.unbind(1)
        flipped = w < 0
        w = w.abs()
        assert 0.4 < flipped.double().mean() < 0.6
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-9).all() and (y0 + h <= 1 + 1e-9).all()
        area = w * h
        jitter = (w * sizes[:, 0]) / (h * sizes[:, 1]) / target  # pixel aspect over the target aspect
        assert (area[~tall] >= 0.6 - 0.01).all() and (area[~tall] <= 1.0).all(), resize
        assert (jitter[~tall] > 0.74).all() and (jitter[~tall] < 1.35).all(), resize
        # a box that cannot fit falls back to the whole image, as in TrainTransform
        assert ((area[tall] == 1.0) | ((jitter[tall] > 0.74) & (jitter[tall] < 1.35))).all(), resize
        # same generator seed, same boxes (resume is exact)
        assert torch.equal(boxes, aug.boxes(sizes, torch.Generator().manual_seed(0)))


def test_pil_and_batched_paths_draw_crops_from_one_sampler():
    """TrainTransform's box for an image is what the shared sampler gives for the same generator state."""
    import random

    from edgecls.data.crop import sample_boxes, target_ratios
    from edgecls.data.transforms import TrainTransform

    pre = Preprocess((32, 48), preset="unit")
    transform = TrainTransform(pre, hflip=0.0, crop_scale=0.5)
    random.seed(3)
    box = transform._crop_box(640, 427)
    random.seed(3)
    generator = torch.Generator().manual_seed(random.getrandbits(63))
    w, h = torch.tensor([640]), torch.tensor([427])
    expected = sample_boxes(w, h, 0.5, target_ratios(w, h, "squash", (32, 48)), generator)[0]
    assert box == tuple(int(v) for v in expected)
    assert 0.5 * 640 * 427 * 0.99 <= box[2] * box[3] <= 640 * 427


def test_batch_augment_crop_matches_pil_crop_and_flip_mirrors(val_samples):
    pre = Preprocess((32, 32), preset="unit")
    img = Image.open(val_samples[0][0]).convert("RGB").resize((96, 96), Image.BICUBIC)
    arr = torch.from_numpy(np.array(img, np.uint8))[None]
    size = torch.tensor([[96, 96]], dtype=torch.int32)

    class FixedBox(ic_augment.BatchAugment):
        def __init__(self, box, *a, **k):
            super().__init__(*a, **k)
            self.box = box

        def boxes(self, orig_sizes, generator):
            return torch.tensor([self.box], dtype=torch.float64)

    # crop the left-top 64x64 quarter-ish, downscale 2x: PIL with a box does the same geometry
    out = FixedBox([0.0, 0.0, 64 / 96, 64 / 96], pre, hflip=0, crop_scale=0.5)(arr, size, torch.Generator())
    want = np.asarray(img.resize((32, 32), Image.BILINEAR, box=(0, 0, 64, 64)), np.float32) / 255
    got = out[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want).mean() < 0.03  # same region (a wrong box differs by ~0.2)
    wrong = np.asarray(img.resize((32, 32), Image.BILINEAR, box=(32, 32, 96, 96)), np.float32) / 255
    assert np.abs(got - wrong).mean() > 2 * np.abs(got - want).mean()
    mirrored = FixedBox([0.0, 0.0, -64 / 96, 64 / 96], pre, hflip=0, crop_scale=0.5)(arr, size, torch.Generator())
    assert torch.allclose(mirrored, out.flip(-1), atol=1e-4)


def test_cached_train_loader_is_seeded_sharded_and_covers_every_image(val_samples, cache_dir):
    pre = Preprocess((32, 32), preset="kneron")
    paths, labels = [p for p, _ in val_samples], [lbl for _, lbl in val_samples]
    images = ic_decoded.load_or_build(
        paths, TrainDecoder(ic_policy.train_cache_size(pre, 0.6)), "ram", log=lambda m: None
    )
    assert images.pixels.shape[1:3] == (40, 40)  # 32 x min(1.25, 1/sqrt(0.6))
    data = ic_loader.CachedSet(images, labels)
    aug = ic_augment.BatchAugment(pre, crop_scale=0.6)

    def epoch(seed):
        loader = ic_loader.CachedLoader(
            data, 64, torch.device("cpu"), preprocess=pre, augment=aug, shuffle=True, seed=seed
        )
        batches = list(loader)
        assert len(batches) == len(loader) == math.ceil(len(labels) / 64)
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    x1, y1 = epoch(5)
    x2, y2 = epoch(5)
    x3, y3 = epoch(6)
    assert x1.shape == (len(labels), 3, 32, 32) and x1.dtype == torch.float32
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(y1, y3)  # another epoch, another order
    assert sorted(y1.tolist()) == sorted(labels)
    assert -0.51 <= x1.min() and x1.max() <= 0.5  # kneron range

    from edgecls.data.loaders import ShardSampler

    shards = [ShardSampler(len(data), r, 2) for r in (0, 1)]
    seen = [ic_loader.CachedLoader(data, 64, torch.device("cpu"), preprocess=pre, sampler=s) for s in shards]
    counts = [sum(len(y) for _, y in loader) for loader in seen]
    assert sum(counts) == len(labels)  # every eval image counted exactly once across ranks


def test_resolve_mode_budgets():
    assert ic_policy.resolve_mode("auto", 10 * 2**20) == "ram"
    assert ic_policy.resolve_mode("auto", 10 * 2**20, distributed=True) in ("disk", "ram")
    assert ic_policy.resolve_mode("auto", 2**60) == "none"
    assert ic_policy.resolve_mode("disk", 2**60) == "disk"
    with pytest.raises(UserError, match="`cache_images`"):
        ic_policy.resolve_mode("gpu", 1)


def test_training_with_disk_cache_reuses_it_on_the_second_run(digits_dir, tmp_path, cache_dir, capsys):
    from edgecls.engine.config import TrainConfig
    from edgecls.engine.trainer import fit

    def run(name):
        return fit(
            TrainConfig(
                data=str(digits_dir),
                backbone="FP_classifier",
                input_size=(32, 32),
                epochs=2,
                batch_size=32,
                optimizer="ADAMW",
                lr=3e-3,
                hflip=0.0,
                crop_scale=0.8,
                workers=1,
                snapshot_path=str(tmp_path / name),
                model_def_path=None,
                seed=0,
                cache_images="disk",
            )
        )

    first = run("a")
    out1 = capsys.readouterr().out
    assert out1.count("caching") == 2  # train and val caches built once
    files = sorted(os.listdir(cache_dir))
    second = run("b")
    out2 = capsys.readouterr().out
    assert "caching" not in out2 and sorted(os.listdir(cache_dir)) == files
    assert first.best_top1 > 0.5 and second.best_top1 == first.best_top1  # same seed, same result


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Real photographs (scikit-learn's samples) as the kinds of file the nvjpeg path must sort out."""
    from sklearn.datasets import load_sample_images

    out = tmp_path_factory.mktemp("photos")
    china, flower = load_sample_images().images
    files = []
    for i, (photo, box) in enumerate(
        [
            (china, (0, 0, 375, 500)),
            (flower, (20, 40, 395, 540)),
            (china, (50, 60, 250, 360)),
            (flower, (0, 0, 427, 640)),
        ]
    ):
        top, left, bottom, right = box
        path = out / f"plain_{i}.jpg"
        Image.fromarray(photo[top:bottom, left:right]).save(path, quality=90)
        files.append(path)
    Image.fromarray(china[:300, :400]).save(out / "progressive.jpg", quality=90, progressive=True)
    Image.fromarray(china[:300, :400]).convert("L").save(out / "gray.jpg", quality=90)
    Image.fromarray(flower[:200, :300]).save(out / "lossless.png")
    rotated = Image.fromarray(flower[:240, :320])
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(out / "rotated.jpg", quality=90, exif=exif)
    return sorted(str(p) for p in out.iterdir())


def test_jpeg_header_agrees_with_pil(photo_folder, tmp_path):
    from edgecls.data.cache.fill_workers import jpeg_header

    cmyk = tmp_path / "cmyk.jpg"
    Image.open(photo_folder[0]).convert("CMYK").save(cmyk)
    for path in [*photo_folder, str(cmyk)]:
        head = jpeg_header(Path(path).read_bytes())
        with Image.open(path) as img:
            if img.format != "JPEG":
                assert head is None, path
                continue
            assert (head.width, head.height) == img.size, path
            assert head.components == len(img.getbands()), path
            assert head.progressive == bool(img.info.get("progressive")), path
            assert head.orientation == img.getexif().get(0x0112, 1), path


@pytest.mark.parametrize("read_ahead", [0, 1, 4])
def test_reader_processes_return_every_chunk_in_order_read_or_decoded(photo_folder, tmp_path, read_ahead):
    """Child processes do the fill's file work: each nvjpeg-exact JPEG comes back byte for byte with its size;
    every other file (PNG, progressive, gray, EXIF-rotated) as the TrainDecoder's row, exactly; a vanished
    or broken file as an error naming the reason; chunks in order, received by a thread ahead of the
    caller or (read_ahead=0) by the caller."""
    from edgecls.data.cache.fill_workers import ERROR, JPEG, ROW, read_chunks

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    paths = [*photo_folder, str(tmp_path / "vanished.jpg"), str(broken)]
    chunks = [paths[:3], paths[3:4], [], paths[4:], paths[:2]]
    decoder = TrainDecoder((40, 48), "bicubic")
    got = list(read_chunks(chunks, decoder.size, decoder.interpolation, processes=2, read_ahead=read_ahead))
    assert [len(c) for c in got] == [len(c) for c in chunks]
    for chunk, results in zip(chunks, got):
        for path, result in zip(chunk, results):
            name = os.path.basename(path)
            if name.startswith("plain"):
                assert result.kind == JPEG and bytes(result.data) == Path(path).read_bytes(), path
                with Image.open(path) as img:
                    assert result.size == img.size, path
            elif name in ("vanished.jpg", "broken.png"):
                assert result.kind == ERROR and result.size is None, path
                assert ("FileNotFoundError" if name == "vanished.jpg" else "UnidentifiedImageError") in result.data
            else:
                row, size = decoder(path)
                assert result.kind == ROW and result.size == size, path
                assert np.array_equal(np.frombuffer(result.data, np.uint8).reshape(row.shape), row), path
    data = next(r.data for results in got for r in results if r.kind == JPEG)
    assert not data.readonly  # torch.frombuffer wraps it without a copy or a warning
    assert list(read_chunks([], (8, 8))) == []


def test_reader_processes_import_from_where_the_training_process_does(photo_folder):
    """A training process that finds numpy/PIL/edgecls only through PYTHONPATH (module systems, some conda
    setups): the isolated (-I) reader children take its sys.path, so they decode too."""
    import subprocess
    import sys

    system = "/usr/bin/python3"
    probe = subprocess.run([system, "-c", "import sys, numpy"], capture_output=True) if os.path.exists(system) else None
    same = (
        probe is not None
        and subprocess.run(
            [system, "-c", f"import sys; sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])})"]
        ).returncode
        == 0
    )
    if not same or probe.returncode == 0:
        pytest.skip("needs a /usr/bin/python3 of this Python version without numpy")
    site = [p for p in sys.path if p.endswith("site-packages")]
    repo = str(Path(__file__).resolve().parents[1])
    png = next(p for p in photo_folder if p.endswith(".png"))
    code = (
        "import sys; from edgecls.data.cache.fill_workers import ROW, read_chunks; "
        "r = list(read_chunks([[sys.argv[1]]], (8, 8))); print(r[0][0].kind == ROW)"
    )
    done = subprocess.run(
        [system, "-c", code, png],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([repo, *site])},
    )
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def record_reader_processes(monkeypatch) -> list:
    """The list that every reader process read_chunks starts from now on is appended to."""
    import subprocess

    from edgecls.data.cache import fill_workers

    started, real_popen = [], subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(fill_workers.subprocess, "Popen", recording_popen)
    return started


@pytest.mark.parametrize("read_ahead", [0, 4])
def test_reader_processes_stop_when_the_fill_stops_or_they_die(photo_folder, monkeypatch, read_ahead):
    from edgecls.data.cache import fill_workers

    started = record_reader_processes(monkeypatch)
    reads = fill_workers.read_chunks([photo_folder[:1]] * 400, (40, 48), processes=2, read_ahead=read_ahead)
    next(reads)
    os.kill(started[0].pid, signal.SIGINT)  # Ctrl-C reaches the whole process group: the readers leave it to us
    assert len(list(itertools.islice(reads, 100))) == 100
    reads.close()  # what the fill does when decoding fails
    assert len(started) == 2 and all(child.returncode is not None for child in started)
    assert not any(t.name == "edgecls-fill-receiver" for t in threading.enumerate())

    monkeypatch.setattr(fill_workers.sys, "executable", shutil.which("false"))
    with pytest.raises(UserError, match="reader process .* ended early .*`cache_images` ram"):
        list(fill_workers.read_chunks([photo_folder[:1]], (40, 48), processes=1, read_ahead=read_ahead))


def test_receiver_errors_and_dead_children_reach_the_consumer(photo_folder, monkeypatch):
    """With the receiver thread: an exception while receiving is raised at that chunk, a child killed mid-stream
    ends the reading with the one-line error, after the chunks already received; no thread is left."""
    from edgecls.data.cache import fill_workers

    real_decode, calls = fill_workers.decode_frame, []

    def failing_decode(body):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("frame 3 is corrupt")
        return real_decode(body)

    monkeypatch.setattr(fill_workers, "decode_frame", failing_decode)
    got = []
    with pytest.raises(ValueError, match="frame 3 is corrupt"):
        for results in fill_workers.read_chunks([photo_folder[:2]] * 10, (40, 48), processes=2, read_ahead=4):
            got.append(results)
    assert len(got) == 2
    monkeypatch.setattr(fill_workers, "decode_frame", real_decode)

    started = record_reader_processes(monkeypatch)
    reads = fill_workers.read_chunks([photo_folder[:1]] * 2000, (40, 48), processes=2, read_ahead=4)
    next(reads)
    started[1].kill()
    with pytest.raises(UserError, match="reader process .* ended early"):
        for _ in reads:
            pass
    assert not any(t.name == "edgecls-fill-receiver" for t in threading.enumerate())
    assert all(child.returncode is not None for child in started)


def test_device_cache_decodes_jpegs_with_torchvision_and_the_rest_with_pil(photo_folder):
    """The "gpu" cache's fill, run with device=cpu (the same torchvision call); CUDA itself is exercised by
    benchmarks/gpu_train_speed.sh on a GPU machine."""
    from edgecls.data.cache.gpu import build_on_device

    decoder = TrainDecoder((40, 48))
    logs: list[str] = []
    built = build_on_device(photo_folder, decoder, torch.device("cpu"), workers=2, log=logs.append)
    ref = ic_decoded.load_or_build(photo_folder, decoder, "ram", workers=1, log=lambda m: None)
    assert built.mode == "gpu" and isinstance(built.pixels, torch.Tensor) and built.pixels.shape == (8, 40, 48, 3)
    assert np.array_equal(built.orig_sizes, ref.orig_sizes)  # upright (W, H) of every source, rotated one too
    assert any("4 JPEGs decoded on the CPU (torchvision), 4 files by PIL" in m for m in logs)
    for i, path in enumerate(photo_folder):
        got, want = built.pixels[i].numpy().astype(int), ref.pixels[i].astype(int)
        if os.path.basename(path).startswith("plain"):  # full decode + antialiased resize vs PIL's draft decode
            assert np.abs(got - want).mean() < 4, path
        else:  # PIL on both sides: identical
            assert np.array_equal(got, want), path


def test_streamed_fill_trains_the_first_epoch_on_rows_as_they_land(val_samples):
    """A fill started in the background, in the loader's visiting order: every batch equals the one
    from a cache built up front (the loader waits for its rows), and nothing is left unwritten."""
    from edgecls.data.cache.gpu import DeviceFill
    from edgecls.data.loaders import fill_timings

    pre = Preprocess((32, 32), preset="kneron")
    paths, labels = [p for p, _ in val_samples], [lbl for _, lbl in val_samples]
    decoder = TrainDecoder(ic_policy.train_cache_size(pre, 0.6))
    aug = ic_augment.BatchAugment(pre, crop_scale=0.6)
    full = DeviceFill(paths, decoder, torch.device("cpu"), log=lambda m: None).run()
    streamed = DeviceFill(
        paths, decoder, torch.device("cpu"), order=ic_loader.shuffled_order(len(paths), 11), log=lambda m: None
    ).start()

    def batches(images):
        return list(
            ic_loader.CachedLoader(
                ic_loader.CachedSet(images, labels),
                64,
                torch.device("cpu"),
                preprocess=pre,
                augment=aug,
                shuffle=True,
                seed=11,
            )
        )

    for (x1, y1), (x2, y2) in zip(batches(full), batches(streamed)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    streamed.fill.join()
    assert streamed.fill.finished and torch.equal(full.pixels, streamed.pixels)
    timings = fill_timings(ic_loader.CachedSet(streamed, labels))
    assert timings["fill_s"] == round(streamed.fill.seconds, 3) > 0
    assert 0 <= timings["fill_first_wait_s"] <= timings["fill_wait_s"] == round(streamed.fill.wait_seconds, 3)
    assert timings["fill_nvjpeg_images"] == sum(p.lower().endswith(".jpg") for p in paths)


def test_a_file_broken_after_the_scan_stops_the_streamed_fill_with_its_path(photo_folder, tmp_path):
    from edgecls.data.cache.gpu import DeviceFill

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    paths = [*photo_folder, str(broken)]
    images = DeviceFill(paths, TrainDecoder((40, 48)), torch.device("cpu"), log=lambda m: None).start()
    with pytest.raises(UserError, match=f"{broken}: could not be decoded for the image cache .*`cache_images` none"):
        images.fill.wait_all()


@pytest.mark.parametrize("broken_count", [1, 12])
def test_files_broken_after_the_scan_stop_the_ram_cache_with_their_paths(photo_folder, tmp_path, broken_count):
    """One file: the same one-line error as the gpu fill's; several: the first 10 listed, the rest counted."""
    broken = []
    for i in range(broken_count):
        broken.append(tmp_path / f"broken{i}.png")
        broken[-1].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(UserError) as exc:
        ic_decoded.load_or_build([*photo_folder, *map(str, broken)], TrainDecoder((40, 48)), "ram", log=lambda m: None)
    message = str(exc.value)
    assert message.endswith("`cache_images` none")
    if broken_count == 1:
        assert "\n" not in message and message.startswith(f"{broken[0]}: could not be decoded for the image cache (")
    else:
        assert message.startswith("12 images could not be decoded") and "... and 2 more" in message
        assert all(str(b) in message for b in broken[:10]) and str(broken[10]) not in message


def test_first_epoch_timings_wait_for_rows_the_epoch_dropped(photo_folder, monkeypatch):
    """With drop_last the epoch can end before the fill writes its last chunk: the timings wait for it."""
    from edgecls.data.cache import gpu as gpu_cache
    from edgecls.data.loaders import fill_timings

    real_read_chunks = gpu_cache.read_chunks

    def slow_last_chunk(chunks, *args):
        for i, chunk in enumerate(real_read_chunks(chunks, *args)):
            if i == len(chunks) - 1:
                time.sleep(1.0)
            yield chunk

    monkeypatch.setattr(gpu_cache, "READ_CHUNK", 2)
    monkeypatch.setattr(gpu_cache, "read_chunks", slow_last_chunk)
    pre = Preprocess((32, 32), preset="kneron")
    order = ic_loader.shuffled_order(len(photo_folder), 5)
    images = gpu_cache.DeviceFill(
        photo_folder, TrainDecoder((40, 48)), torch.device("cpu"), order=order, log=lambda m: None
    ).start()
    loader = ic_loader.CachedLoader(
        ic_loader.CachedSet(images, [0] * len(photo_folder)),
        3,
        torch.device("cpu"),
        preprocess=pre,
        augment=ic_augment.BatchAugment(pre),
        shuffle=True,
        seed=5,
        drop_last=True,
    )
    assert sum(len(y) for _, y in loader) == 6 and not images.fill.finished  # 2 rows still being read
    timings = fill_timings(ic_loader.CachedSet(images, [0] * len(photo_folder)))
    assert images.fill.finished and timings["fill_s"] >= 1.0
    assert timings["fill_nvjpeg_images"] == 4  # the four plain JPEGs; the others went to PIL
    # the epoch never waited for the slow last chunk, nor do the recorded waits include the join
    assert 0 <= timings["fill_first_wait_s"] <= timings["fill_wait_s"] < timings["fill_s"] - 0.5, timings


def test_loader_over_a_resident_tensor_equals_the_numpy_cache(val_samples):
    pre = Preprocess((32, 32), preset="kneron")
    paths, labels = [p for p, _ in val_samples], [lbl for _, lbl in val_samples]
    images = ic_decoded.load_or_build(
        paths, TrainDecoder(ic_policy.train_cache_size(pre, 0.6)), "ram", log=lambda m: None
    )
    resident = ic_decoded.upload(images, torch.device("cpu"))
    assert isinstance(resident.pixels, torch.Tensor) and resident.nbytes == images.nbytes
    aug = ic_augment.BatchAugment(pre, crop_scale=0.6)
    batches = [
        list(
            ic_loader.CachedLoader(
                ic_loader.CachedSet(imgs, labels),
                64,
                torch.device("cpu"),
                preprocess=pre,
                augment=aug,
                shuffle=True,
                seed=3,
            )
        )
        for imgs in (images, resident)
    ]
    for (x1, y1), (x2, y2) in zip(*batches):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
