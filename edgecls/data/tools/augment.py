"""Offline augmentation that tops every class up to N images, into a separate folder.

The operations are those of the seed toolchain's DataAugmentor: random (grid) distortion,
flips, rotation, random crop, random erasing and resize. Each new image draws its operations
from a generator seeded by (seed, class), so the same seed writes the same files. The
originals are copied into OUT unchanged (re-encoded only with `resize`), so OUT is a
complete, balanced dataset; the source folder is only read.
"""

from __future__ import annotations

import io
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgecls.atomic import atomic_copy, atomic_write_bytes
from edgecls.data.images import to_rgb
from edgecls.data.layout import class_folders, walk_paths
from edgecls.data.tools import SPLITS, detect_layout, is_inside
from edgecls.data.verify import verify_files
from edgecls.errors import UserError

OPERATIONS = ("distort", "hflip", "vflip", "rotate", "crop", "erase")
DEFAULT_OPERATIONS = ("distort", "hflip", "rotate", "crop", "erase")
AUGMENTED_NAME = re.compile(r"(.+)_aug\d{5,}\.png")  # <original stem>_aug00000.png, maybe behind x's


def distort(img: Image.Image, rng: np.random.Generator, grid: int = 4, magnitude: float = 0.08) -> Image.Image:
    """Move the inner points of a grid x grid mesh by up to `magnitude` of a cell and warp the image."""
    w, h = img.size
    xs = np.linspace(0, w, grid + 1)
    ys = np.linspace(0, h, grid + 1)
    px = np.tile(xs, (grid + 1, 1))
    py = np.tile(ys[:, None], (1, grid + 1))
    jitter_x = rng.uniform(-1, 1, (grid - 1, grid - 1)) * magnitude * w
    jitter_y = rng.uniform(-1, 1, (grid - 1, grid - 1)) * magnitude * h
    px[1:-1, 1:-1] += jitter_x
    py[1:-1, 1:-1] += jitter_y
    mesh = []
    for j in range(grid):
        for i in range(grid):
            box = (int(round(xs[i])), int(round(ys[j])), int(round(xs[i + 1])), int(round(ys[j + 1])))
            # source quad corners: upper-left, lower-left, lower-right, upper-right
            quad = (
                px[j, i],
                py[j, i],
                px[j + 1, i],
                py[j + 1, i],
                px[j + 1, i + 1],
                py[j + 1, i + 1],
                px[j, i + 1],
                py[j, i + 1],
            )
            mesh.append((box, tuple(float(v) for v in quad)))
    return img.transform(img.size, Image.MESH, mesh, resample=Image.BILINEAR)


def rotate(img: Image.Image, rng: np.random.Generator, max_degrees: float = 15.0) -> Image.Image:
    """Rotate, crop the largest upright rectangle free of empty corners, scale back to the same size."""
    angle = float(rng.uniform(-max_degrees, max_degrees))
    w, h = img.size
    rotated = img.rotate(angle, resample=Image.BILINEAR, expand=True)
    cw, ch = _largest_inner_rect(w, h, math.radians(angle))
    left = (rotated.width - cw) / 2
    top = (rotated.height - ch) / 2
    box = (int(math.ceil(left)), int(math.ceil(top)), int(math.floor(left + cw)), int(math.floor(top + ch)))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return img.copy()
    return rotated.crop(box).resize((w, h), Image.BILINEAR)


def _largest_inner_rect(w: float, h: float, angle: float) -> tuple[float, float]:
    """Width and height of the largest axis-aligned rectangle inside a w x h rectangle rotated by angle."""
    sin_a, cos_a = abs(math.sin(angle)), abs(math.cos(angle))
    long_side, short_side = max(w, h), min(w, h)
    if short_side <= 2.0 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side
        wr, hr = (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a
    return wr, hr


def random_crop(img: Image.Image, rng: np.random.Generator, min_scale: float = 0.75) -> Image.Image:
    """Crop a random window of min_scale..1 of each side, scaled back to the original size."""
    w, h = img.size
    scale = float(rng.uniform(min_scale, 1.0))
    cw, ch = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    x = int(rng.integers(0, w - cw + 1))
    y = int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)


def random_erase(img: Image.Image, rng: np.random.Generator, max_area: float = 0.2) -> Image.Image:
    """Fill a random rectangle (2%..max_area of the image, aspect 0.3..3.3) with random noise."""
    arr = np.array(img)
    h, w = arr.shape[:2]
    for _ in range(10):
        area = rng.uniform(0.02, max_area) * w * h
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        ew, eh = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < ew <= w and 0 < eh <= h:
            x, y = int(rng.integers(0, w - ew + 1)), int(rng.integers(0, h - eh + 1))
            arr[y : y + eh, x : x + ew] = rng.integers(0, 256, arr[y : y + eh, x : x + ew].shape, dtype=np.uint8)
            break
    return Image.fromarray(arr, mode=img.mode)


def augment_image(
    img: Image.Image,
    rng: np.random.Generator,
    operations=DEFAULT_OPERATIONS,
    probability: float = 0.5,
    max_rotation: float = 15.0,
    crop_scale: float = 0.75,
    erase_area: float = 0.2,
) -> tuple[Image.Image, list[str]]:
    """Apply each operation with `probability` (at least one always), in a fixed order."""
    chosen = [op for op in operations if rng.random() < probability]
    if not chosen:
        chosen = [operations[int(rng.integers(len(operations)))]]
    for op in OPERATIONS:
        if op not in chosen:
            continue
        if op == "distort":
            img = distort(img, rng)
        elif op == "hflip":
            img = ImageOps.mirror(img)
        elif op == "vflip":
            img = ImageOps.flip(img)
        elif op == "rotate":
            img = rotate(img, rng, max_rotation)
        elif op == "crop":
            img = random_crop(img, rng, crop_scale)
        elif op == "erase":
            img = random_erase(img, rng, erase_area)
    return img, [op for op in OPERATIONS if op in chosen]


def _open_for_augment(path: Path) -> Image.Image:
    """Upright image kept grayscale when it is grayscale, else RGB (same reader rules as load_rgb)."""
    with Image.open(path) as raw:
        raw.load()
        img = ImageOps.exif_transpose(raw)
        return img.copy() if img.mode in ("L", "RGB") else to_rgb(img)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _check_out(src: Path, out: Path, force: bool) -> None:
    if is_inside(out, src) or is_inside(src, out):
        raise UserError(f"`out` {out}: must be outside the source folder {src} (and not contain it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"`out` {out}: already exists and is not empty; choose another folder or pass `force`")


def augment_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    target_per_class: int,
    seed: int = 0,
    operations=DEFAULT_OPERATIONS,
    probability: float = 0.5,
    max_rotation: float = 15.0,
    crop_scale: float = 0.75,
    erase_area: float = 0.2,
    resize: tuple[int, int] | None = None,
    force: bool = False,
    workers: int | None = None,
) -> dict:
    """Write OUT with every class of train/ (or of DIR/<class>/) topped up to target_per_class.

    val/ and test/ are copied unchanged: evaluation never sees augmented images.
    Returns {"counts": {class: {"original", "augmented"}}, "skipped": [(path, reason)], ...}.
    """
    if target_per_class < 1:
        raise UserError(f"`target_per_class` {target_per_class}: must be at least 1")
    if not 0 <= probability <= 1:
        raise UserError(f"`probability` {probability}: must be between 0 and 1")
    bad_ops = [op for op in operations if op not in OPERATIONS]
    if bad_ops or not operations:
        raise UserError(f"`ops` {','.join(operations)}: choose from {','.join(OPERATIONS)}")
    if not 0 <= max_rotation <= 180:
        raise UserError(f"`max_rotation` {max_rotation}: must be between 0 and 180")
    if not 0 < crop_scale <= 1:
        raise UserError(f"`crop_scale` {crop_scale}: must be greater than 0 and at most 1")
    if not 0.02 < erase_area < 1:
        raise UserError(f"`erase_area` {erase_area}: must be greater than 0.02 and less than 1")
    layout = detect_layout(src)
    src, out = layout.root, Path(out)
    _check_out(src, out, force)

    if layout.kind == "splits":
        jobs = {"train": (src / "train", out / "train")}
        plain = {s: (src / s, out / s) for s in SPLITS[1:] if (src / s).is_dir()}
    else:
        jobs = {"all": (src, out)}
        plain = {}

    counts: dict[str, dict[str, int]] = {}
    skipped: list[tuple[str, str]] = []
    replaced = 0
    for _split, (in_root, out_root) in jobs.items():
        for cls in class_folders(in_root):
            files = walk_paths(in_root / cls, images_only=True)
            verdicts = verify_files([str(p) for p in files], workers=workers)
            good = [p for p in files if verdicts[str(p)] is None]
            skipped += [(str(p), verdicts[str(p)]) for p in files if verdicts[str(p)] is not None]
            if force:
                replaced += remove_earlier_augmented(out_root / cls, files, in_root / cls)
            counts[cls] = _augment_class(
                cls,
                good,
                in_root / cls,
                out_root / cls,
                target_per_class,
                seed,
                dict(
                    operations=tuple(operations),
                    probability=probability,
                    max_rotation=max_rotation,
                    crop_scale=crop_scale,
                    erase_area=erase_area,
                ),
                resize,
            )
    for _split, (in_root, out_root) in plain.items():
        for path in walk_paths(in_root, images_only=True):
            _write_original(path, out_root / path.relative_to(in_root), resize)
    return {
        "src": str(src),
        "out": str(out),
        "target_per_class": target_per_class,
        "seed": seed,
        "operations": list(operations),
        "counts": counts,
        "skipped": skipped,
        "copied_splits": sorted(plain),
        "replaced": replaced,
    }


def is_augmented_name(name: str, stems: set[str]) -> bool:
    """True for a name this tool gives a new image: `<stem>_aug00000.png`, `x<stem>_aug...`, of one of `stems`."""
    match = AUGMENTED_NAME.fullmatch(name)
    stem = match.group(1) if match else None
    while stem is not None:
        if stem in stems:
            return True
        stem = stem[1:] if stem.startswith("x") else None
    return False


def remove_earlier_augmented(out_dir: Path, sources: list[Path], in_dir: Path) -> int:
    """Delete the images an earlier run wrote for these sources into out_dir (never an original); the count."""
    if not out_dir.is_dir():
        return 0
    stems = {p.stem for p in sources}
    originals = {p.relative_to(in_dir).as_posix() for p in sources}
    stale = [
        e for e in out_dir.iterdir() if e.is_file() and e.name not in originals and is_augmented_name(e.name, stems)
    ]
    for path in stale:
        path.unlink()
    return len(stale)


def _write_original(path: Path, dest: Path, resize: tuple[int, int] | None) -> None:
    if resize is None:
        atomic_copy(path, dest)
    else:
        img = _open_for_augment(path).resize((resize[1], resize[0]), Image.BILINEAR)
        fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
        if fmt == "JPEG" and img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        atomic_write_bytes(buf.getvalue(), dest)


def _augment_class(
    cls: str,
    good: list[Path],
    in_dir: Path,
    out_dir: Path,
    target: int,
    seed: int,
    params: dict,
    resize: tuple[int, int] | None,
) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in good:
        _write_original(path, out_dir / path.relative_to(in_dir), resize)
    originals = {p.relative_to(in_dir).as_posix() for p in good}
    need = max(0, target - len(good))
    if need and not good:
        raise UserError(f"{in_dir}: class '{cls}' has no readable images to augment from")
    rng = np.random.default_rng([seed, zlib.crc32(cls.encode("utf-8"))])
    order = list(rng.permutation(len(good))) if good else []
    for k in range(need):
        source = good[order[k % len(order)]]
        img = _open_for_augment(source)
        if resize is not None:
            img = img.resize((resize[1], resize[0]), Image.BILINEAR)
        img, _ops = augment_image(img, rng, **params)
        name = f"{source.stem}_aug{k:05d}.png"
        while name in originals:  # an original already has that name: never replace it
            name = "x" + name
        dest = out_dir / name
        atomic_write_bytes(_png_bytes(img), dest)
    return {"original": len(good), "augmented": need}


def format_augment_report(result: dict) -> str:
    width = max([5] + [len(c) for c in result["counts"]])
    lines = [f"{'class':<{width}}  original  augmented   total"]
    for cls, row in result["counts"].items():
        lines.append(
            f"{cls:<{width}}  {row['original']:>8}  {row['augmented']:>9}  {row['original'] + row['augmented']:>6}"
        )
    lines.append(
        f"wrote {result['out']} (target {result['target_per_class']} per class, seed {result['seed']}, "
        f"ops {','.join(result['operations'])}); the source folder was not changed"
    )
    if result.get("replaced"):
        lines.append(
            f"replaced {result['replaced']} augmented file(s) of an earlier run (--force); "
            "originals and other files in the output folder were kept"
        )
    if result["copied_splits"]:
        lines.append(f"copied {', '.join(s + '/' for s in result['copied_splits'])} unchanged (never augmented)")
    if result["skipped"]:
        lines.append(
            f"skipped {len(result['skipped'])} unreadable file(s), e.g. {result['skipped'][0][0]}: "
            f"{result['skipped'][0][1]}"
        )
    return "\n".join(lines)
