"""`edgecls data pack DIR --out SHARDS`: a dataset folder as WebDataset tar shards plus an index JSON.

Every split (train/, val/, test/) becomes `SPLIT-000000.tar`, `SPLIT-000001.tar` ... of about
`shard_size` bytes, written with webdataset's TarWriter: plain tar files in which each image is
`<class>/<name>.<ext>` (the file's own bytes, or re-encoded when `resize_to` is given) beside
`<class>/<name>.cls` (its class id), so `tar tf` or any WebDataset reader can open them.

- The images are verified first, as train.py verifies a folder (same check, same verdict cache); bad
  ones are reported and left out, listed in SHARDS/bad_files.txt.
- The images of a split are shuffled (seeded) before they are cut into shards, so a stream of whole
  shards mixes the classes; `index.json` records each image's place in the folder's own order.
- Shards are written by a pool of processes, each shard whole or not at all (a temp file renamed).
  Each finished shard is recorded in SHARDS/.pack-journal.jsonl, so a pack that was interrupted
  (even by SIGKILL) resumes where it stopped when run again with the same data and settings.
- index.json is written last; it marks a complete shard set. Without `force`, a folder that holds
  one, another pack's unfinished work, or any other files is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tarfile
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from edgecls.atomic import atomic_path, atomic_write_text
from edgecls.data.classmap import check_split_classes
from edgecls.data.shards.index import FORMAT, INDEX_NAME, format_index
from edgecls.data.tools import SPLITS, is_inside
from edgecls.errors import UserError
from edgecls.settings import POSITIONAL, SWITCH, check, format_bytes, parse_bytes, setting

JOURNAL = ".pack-journal.jsonl"
BAD_FILES = "bad_files.txt"
TAR_OVERHEAD = 3 * 512  # per image: its header, the .cls member's header and data block (planning estimate)
_OWN_FILE = re.compile(r"^((train|val|test)-\d{6}\.tar|\.tmp-.*|index\.json|bad_files\.txt|\.pack-journal\.jsonl)$")


def parse_resize(text: str) -> tuple[int, ...]:
    """'256' -> (256,): shorter side 256, aspect kept; '56x32' -> (56, 32): squashed to H x W."""
    import argparse

    parts = str(text).lower().replace(",", "x").split("x")
    try:
        nums = tuple(int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use N (shorter side) or HxW, e.g. 256 or 56x32") from None
    if len(nums) not in (1, 2) or min(nums) < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: use N (shorter side) or HxW with sides >= 8")
    return nums


@dataclass
class PackConfig:
    dir: str | None = setting(
        None, "dataset folder: DIR/train/<class>/ (and val/, test/)", kind=POSITIONAL, metavar="DIR"
    )
    out: str | None = setting(None, "folder for the shards and index.json", required=True, metavar="SHARDS")
    shard_size: int = setting(
        100_000_000,
        "about this many bytes per shard, e.g. 100MB or 1GiB (default: 100MB)",
        parse=parse_bytes,
        metavar="SIZE",
    )
    resize_to: tuple | None = setting(
        None,
        "re-encode every image smaller: N = shorter side at most N (aspect kept; smaller images are kept as "
        "they are), HxW = squashed to exactly H x W (default: the files' own bytes)",
        parse=parse_resize,
        metavar="SIZE",
    )
    seed: int = setting(0, "seed of the shuffle that spreads each split's images over its shards", parse=int)
    workers: int | None = setting(None, "processes (default: every core)", parse=int, at_least=1, metavar="N")
    force: bool = setting(
        False, "replace what --out holds from an earlier pack (a shard set or unfinished work)", kind=SWITCH
    )

    def check(self) -> None:
        """Every field against its declared rules (a UserError naming the field)."""
        check(self)


@dataclass(frozen=True)
class Item:
    """One image to pack: its source, class id, place in the folder's order, member key and extension."""

    path: str
    label: int
    pos: int
    key: str
    ext: str
    estimate: int  # bytes it will take in the tar (planning)


@dataclass
class PlannedShard:
    split: str
    file: str
    items: list[Item]


# ----------------------------------------------------------------------------- planning


def member_key(rel: str) -> str:
    """The WebDataset key of a file at `rel` (class/.../name.ext): the path without its extension, dots in
    the file name made underscores (a key's file name may hold no dot: WebDataset splits the extension there)."""
    parts = rel.replace(os.sep, "/").split("/")
    stem = parts[-1].rsplit(".", 1)[0] if "." in parts[-1] else parts[-1]
    parts[-1] = stem.replace(".", "_") or "image"
    return "/".join(parts)


def packed_ext(path: str, resize: tuple | None) -> str:
    """The member's extension: the file's own (lower case), or what a resized image is re-encoded as."""
    ext = os.path.splitext(path)[1].lower().lstrip(".") or "img"
    if resize is None:
        return ext
    return "jpg" if ext in ("jpg", "jpeg") else "png"


def split_items(split, resize: tuple | None, ratio: float) -> list[Item]:
    items, used = [], set()
    for pos, (path, label) in enumerate(split.samples):
        key = member_key(os.path.relpath(path, split.root))
        if key in used:
            key = f"{key}_{pos}"
        used.add(key)
        size = os.path.getsize(path)
        estimate = -(-int(size * ratio) // 512) * 512 + TAR_OVERHEAD
        items.append(Item(path, label, pos, key, packed_ext(path, resize), estimate))
    return items


def cut_shards(split_name: str, items: list[Item], shard_size: int, seed: int) -> list[PlannedShard]:
    """The items shuffled (seeded by seed and split), then cut into shards of about shard_size bytes."""
    order = list(items)
    random.Random(f"{seed}:{split_name}").shuffle(order)
    shards: list[list[Item]] = [[]]
    total = 0
    for item in order:
        if shards[-1] and total + item.estimate > shard_size:
            shards.append([])
            total = 0
        shards[-1].append(item)
        total += item.estimate
    return [PlannedShard(split_name, f"{split_name}-{i:06d}.tar", chunk) for i, chunk in enumerate(shards) if chunk]


def resize_ratio(splits: dict, resize: tuple | None, sample: int = 16) -> float:
    """Packed bytes / file bytes, measured on a few images (evenly spread, so the same ones every time)."""
    if resize is None:
        return 1.0
    samples = [s for split in splits.values() for s in split.samples]
    picked = samples[:: max(1, len(samples) // sample)][:sample]
    packed = sum(len(encode_image(path, resize, packed_ext(path, resize))) for path, _ in picked)
    return packed / max(1, sum(os.path.getsize(path) for path, _ in picked))


def fingerprint(classes: list[str], splits: dict, cfg: PackConfig) -> str:
    """What a resumed pack must share with the interrupted one: the files (path, size, mtime) and the settings."""
    h = hashlib.sha256(json.dumps([FORMAT, classes, cfg.shard_size, cfg.resize_to, cfg.seed]).encode())
    for name, split in splits.items():
        for path, label in split.samples:
            st = os.stat(path)
            h.update(f"\n{name}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{label}".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- writing (worker processes)


def encode_image(path: str, resize: tuple, ext: str) -> bytes:
    """The image made smaller as `resize` asks and re-encoded (JPEG quality 95 or PNG); upright RGB."""
    import io

    from PIL import Image

    from edgecls.data.images import to_rgb

    with Image.open(path) as img:
        w, h = img.size
        if len(resize) == 1:
            scale = resize[0] / min(w, h)
            if scale >= 1.0 and img.getexif().get(0x0112, 1) == 1:
                with open(path, "rb") as fh:
                    return fh.read()  # small enough already: the file as it is
            target = (w, h) if scale >= 1.0 else (max(1, round(w * scale)), max(1, round(h * scale)))
        else:
            target = None  # H x W after the EXIF rotation, below
        if img.format == "JPEG":
            side = max(resize) if target is None else max(target)
            img.draft(None, (side, side))  # DCT-domain downscale: much cheaper, still at least the target size
        img.load()
        rgb = to_rgb(img)
    if target is None:
        target = (resize[1], resize[0])
    elif rgb.size != (w, h) and rgb.size[::-1] == (w, h):
        target = target[::-1]  # rotated by EXIF
    if rgb.size != target:
        rgb = rgb.resize(target, Image.BICUBIC)
    buf = io.BytesIO()
    if ext == "jpg":
        rgb.save(buf, format="JPEG", quality=95)
    else:
        rgb.save(buf, format="PNG")
    return buf.getvalue()


def write_shard(job) -> dict:
    """Write one planned shard (a temp file, renamed when whole); its index record."""
    import webdataset as wds

    out, shard, resize, num_classes = job
    dst = Path(out) / shard.file
    with atomic_path(dst) as tmp:
        with open(tmp, "wb") as fh:
            writer = wds.TarWriter(fh, encoder=False, mtime=0, format="PAX_FORMAT", user="edgecls", group="edgecls")
            for item in shard.items:
                data = encode_image(item.path, resize, item.ext) if resize else Path(item.path).read_bytes()
                writer.write({"__key__": item.key, item.ext: data, "cls": str(item.label).encode("ascii")})
            writer.close()
        ranges = member_ranges(tmp)
        digest = file_sha256(tmp)
        size = tmp.stat().st_size
    samples = [[it.pos, it.label, *ranges[f"{it.key}.{it.ext}"], f"{it.key}.{it.ext}"] for it in shard.items]
    counts = [0] * num_classes
    for it in shard.items:
        counts[it.label] += 1
    return {
        "file": shard.file,
        "count": len(shard.items),
        "bytes": size,
        "sha256": digest,
        "class_counts": counts,
        "samples": samples,
    }


def member_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (offset of its data, size), read from the tar's headers."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar if m.isreg()}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the output folder


class Journal:
    """SHARDS/.pack-journal.jsonl: a header line with the pack's fingerprint, then one line per finished shard.
    Appended as shards finish; a line cut short by a kill is ignored when read back."""

    def __init__(self, out: Path):
        self.path = out / JOURNAL

    def read(self) -> tuple[str | None, dict[str, dict]]:
        if not self.path.is_file():
            return None, {}
        header, records = None, {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if header is None:
                header = entry.get("fingerprint")
            elif "shard" in entry:
                records[entry["shard"]["file"]] = entry["shard"]
        return header, records

    def start(self, fp: str) -> None:
        atomic_write_text(json.dumps({"fingerprint": fp}) + "\n", self.path)

    def add(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"shard": record}) + "\n")


def check_out(root: Path, out: Path) -> None:
    """--out must not be the dataset folder or inside one of its splits (it would be read as a class)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out}: is a file; give a folder for the shards")
    if out.resolve() == root.resolve():
        raise UserError(f"`out` {out}: is the dataset folder itself; choose another folder")
    for split in SPLITS:
        if (root / split).is_dir() and is_inside(out, root / split):
            raise UserError(f"`out` {out}: is inside {root / split}, where it would be read as images; choose another")


def refuse_taken(out: Path, force: bool) -> bool:
    """Without --force, refuse a finished shard set or foreign files; True when an unfinished pack may resume."""
    if not out.is_dir():
        return False
    names = [e.name for e in out.iterdir()]
    if force or not names:
        return False
    if INDEX_NAME in names:
        raise UserError(f"`out` {out}: already holds a shard set ({INDEX_NAME}); pass `force` to replace it")
    if JOURNAL in names:
        return True
    raise UserError(
        f"`out` {out}: is not empty ({len(names)} entries, e.g. {sorted(names)[0]}); pass `force` to pack there"
    )


def clear_own_files(out: Path) -> int:
    """Remove what a pack writes (shards, index, journal, temp files, bad_files.txt); other files stay."""
    removed = 0
    if out.is_dir():
        for entry in out.iterdir():
            if entry.is_file() and _OWN_FILE.match(entry.name):
                entry.unlink()
                removed += 1
    return removed


def reusable(out: Path, records: dict[str, dict], plan: list[PlannedShard]) -> dict[str, dict]:
    """The journal's records whose shard is on disk, whole (size and sha256 as recorded) and still planned."""
    planned = {s.file: len(s.items) for s in plan}
    good = {}
    for file, record in records.items():
        path = out / file
        if planned.get(file) != record["count"] or not path.is_file() or path.stat().st_size != record["bytes"]:
            continue
        if file_sha256(path) == record["sha256"]:
            good[file] = record
    return good


# ----------------------------------------------------------------------------- the tool


def scan_source(root: Path, classes: list[str], workers: int | None) -> dict:
    """{split: edgecls.data.folder.Split}, verified as train.py verifies a folder."""
    from edgecls.data.folder import scan_split

    splits = {}
    for name in SPLITS:
        folder = root / name
        if not folder.is_dir():
            continue
        if name != "train":
            check_split_classes(folder, classes)
        splits[name] = scan_split(folder, classes, workers=workers)
    if not splits["train"].samples:
        raise UserError(f"{root / 'train'}: no readable images in any class folder")
    return splits


def pack_dataset(cfg: PackConfig, log=print) -> dict:
    """Pack cfg.dir into cfg.out (resuming an interrupted pack of the same data); returns a report dict."""
    from edgecls.data.folder import bad_file_report, resolve_dataset

    cfg.check()
    started = time.perf_counter()
    root, classes = resolve_dataset(cfg.dir)
    out = Path(cfg.out)
    check_out(root, out)
    may_resume = refuse_taken(out, cfg.force)
    splits = scan_source(root, classes, cfg.workers)
    ratio = resize_ratio(splits, cfg.resize_to)
    plan = [
        shard
        for name, split in splits.items()
        for shard in cut_shards(name, split_items(split, cfg.resize_to, ratio), cfg.shard_size, cfg.seed)
    ]
    fp = fingerprint(classes, splits, cfg)
    journal = Journal(out)
    done: dict[str, dict] = {}
    if may_resume:
        header, records = journal.read()
        if header != fp:
            raise UserError(
                f"`out` {out}: holds an unfinished pack of other images or settings; pass `force` to start over"
            )
        done = reusable(out, records, plan)
    else:
        clear_own_files(out)
        out.mkdir(parents=True, exist_ok=True)
    for entry in out.glob(".tmp-*"):
        entry.unlink()  # a shard a killed pack was writing
    if not done:
        journal.start(fp)
    bad = bad_file_report(splits)
    if bad:
        where = out / BAD_FILES
        log(f"warning: skipped {len(bad.splitlines())} unreadable file(s) (listed in {where}):\n{bad}")
    if done:
        log(f"resuming the pack in {out}: {len(done)} of {len(plan)} shards already written")
    todo = [s for s in plan if s.file not in done]
    records = write_all(out, todo, cfg, len(classes), journal, log, (len(plan), len(done)))
    records.update(done)
    index = build_index(root, classes, splits, plan, records, cfg, bad)
    if bad:
        atomic_write_text(bad + "\n", out / BAD_FILES)
    elif (out / BAD_FILES).exists():
        (out / BAD_FILES).unlink()
    atomic_write_text(format_index(index), out / INDEX_NAME)  # last: a shard set with an index is complete
    journal.path.unlink()
    return {"out": str(out), "index": index, "seconds": time.perf_counter() - started, "resumed_shards": len(done)}


def write_all(out: Path, todo: list[PlannedShard], cfg: PackConfig, num_classes: int, journal: Journal, log, counts):
    """Write the planned shards in worker processes (in this one for a single worker); journal each one."""
    total, done = counts
    workers = min(cfg.workers or os.cpu_count() or 1, max(1, len(todo)))
    records: dict[str, dict] = {}

    def finished(record: dict) -> None:
        journal.add(record)
        records[record["file"]] = record
        log(f"  {record['file']}: {record['count']} images, {format_bytes(record['bytes'])} "
            f"[{done + len(records)}/{total}]")  # fmt: skip

    jobs = [(str(out), shard, cfg.resize_to, num_classes) for shard in todo]
    if workers <= 1:
        for job in jobs:
            finished(write_shard(job))
        return records
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(write_shard, job) for job in jobs}
        while pending:
            ready, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in ready:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                finished(future.result())
    return records


def build_index(root, classes, splits, plan, records, cfg: PackConfig, bad: str) -> dict:
    out_splits = {}
    for name, split in splits.items():
        shards = [records[s.file] for s in plan if s.split == name]
        out_splits[name] = {"count": len(split.samples), "class_counts": split.counts(len(classes)), "shards": shards}
    resize = cfg.resize_to
    return {
        "format": FORMAT,
        "classes": classes,
        "image_size": None
        if resize is None
        else ({"shorter_side_at_most": resize[0]} if len(resize) == 1 else {"height": resize[0], "width": resize[1]}),
        "source": str(root.resolve()),
        "shard_size": cfg.shard_size,
        "seed": cfg.seed,
        "bad_files": len(bad.splitlines()) if bad else 0,
        "splits": out_splits,
    }


def format_pack_report(result: dict) -> str:
    index = result["index"]
    lines = [f"packed into {result['out']} in {result['seconds']:.1f} s ({len(index['classes'])} classes)"]
    for name, entry in index["splits"].items():
        size = sum(s["bytes"] for s in entry["shards"])
        lines.append(f"  {name}: {entry['count']} images in {len(entry['shards'])} shards, {format_bytes(size)}")
    if index["image_size"]:
        lines.append(f"  images resized: {index['image_size']}")
    if result["resumed_shards"]:
        lines.append(f"  {result['resumed_shards']} shards kept from the interrupted pack")
    return "\n".join(lines)
