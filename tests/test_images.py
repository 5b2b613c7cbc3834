"""Image decoding edge cases: every supported format and mode becomes upright 8-bit RGB,
and every kind of broken file is reported with a reason instead of raising mid-training."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, features

from edgecls.data.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    check_image,
    has_image_extension,
    load_rgb,
    load_rgb_bytes,
)
from edgecls.data.layout import is_hidden
from edgecls.data.verify import verify_files

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(w: int = 64, h: int = 48) -> Image.Image:
    """RGB image: top-left red, top-right green, bottom-left blue, bottom-right white."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = RED
    arr[: h // 2, w // 2 :] = GREEN
    arr[h // 2 :, : w // 2] = BLUE
    arr[h // 2 :, w // 2 :] = WHITE
    return Image.fromarray(arr)


def pixel_at(img: Image.Image, fx: float, fy: float) -> np.ndarray:
    """Pixel at a fractional position (centre of a quadrant, away from lossy edges)."""
    return np.asarray(img)[int(fy * img.height), int(fx * img.width)].astype(int)


def assert_color(actual, expected, tol: int = 0):
    assert np.abs(np.asarray(actual, int) - np.asarray(expected, int)).max() <= tol, (actual, expected)


# ----------------------------------------------------------------------------- formats


FORMATS = [
    ("png", {}, 0),
    ("bmp", {}, 0),
    ("tiff", {}, 0),
    ("jpg", {"quality": 95}, 12),
    ("webp", {"lossless": True}, 0),
    ("webp", {"quality": 90}, 20),
]


@pytest.mark.parametrize("ext,save_kw,tol", FORMATS, ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(FORMATS)])
def test_each_format_decodes_to_rgb_with_its_colors(tmp_path, ext, save_kw, tol):
    if ext == "webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = tmp_path / f"img.{ext}"
    quadrants().save(path, **save_kw)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert_color(pixel_at(img, 0.25, 0.25), RED, tol)
    assert_color(pixel_at(img, 0.75, 0.25), GREEN, tol)
    assert_color(pixel_at(img, 0.25, 0.75), BLUE, tol)
    assert_color(pixel_at(img, 0.75, 0.75), WHITE, tol)
    assert check_image(path) is None


def test_uppercase_extensions_count_as_images():
    for ext in IMAGE_EXTENSIONS:
        assert has_image_extension(f"a/b/photo{ext.upper()}")
    assert not has_image_extension("notes.txt")
    assert not has_image_extension("archive.jpg.zip")


# ----------------------------------------------------------------------------- modes


def test_grayscale_l_becomes_three_equal_channels(tmp_path):
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    out = np.asarray(load_rgb(tmp_path / "g.png"))
    assert out.shape == (10, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 3, 4), np.uint8)
    arr[:, 0] = (255, 0, 0, 255)  # opaque red
    arr[:, 1] = (0, 0, 255, 0)  # fully transparent blue -> white
    arr[:, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(tmp_path / "a.png")).astype(int)
    assert out.shape == (4, 3, 3)
    assert_color(out[0, 0], RED)
    assert_color(out[0, 1], WHITE)
    assert_color(out[0, 2], (127, 127, 127), tol=1)


def test_grayscale_with_alpha_la(tmp_path):
    arr = np.zeros((2, 2, 2), np.uint8)
    arr[0, :] = (50, 255)
    arr[1, :] = (50, 0)
    Image.fromarray(arr, mode="LA").save(tmp_path / "la.png")
    out = np.asarray(load_rgb(tmp_path / "la.png"))
    assert_color(out[0, 0], (50, 50, 50))
    assert_color(out[1, 0], WHITE)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (6, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black, index 1 red
    img.paste(1, (3, 0, 6, 2))
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = np.asarray(load_rgb(tmp_path / "p.png"))
    assert_color(out[0, 0], WHITE)  # transparent index -> white background, not black
    assert_color(out[1, 5], RED)


def test_palette_gif_without_transparency(tmp_path):
    quadrants().convert("P", palette=Image.ADAPTIVE, colors=4).save(tmp_path / "q.png")
    img = load_rgb(tmp_path / "q.png")
    assert img.mode == "RGB"
    assert_color(pixel_at(img, 0.25, 0.25), RED, tol=2)


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    img.paste((255, 0, 255, 0), (16, 0, 32, 16))  # pure green
    img.save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as raw:
        assert raw.mode == "CMYK"
    out = load_rgb(tmp_path / "cmyk.jpg")
    assert out.mode == "RGB" and out.size == (32, 16)
    assert_color(pixel_at(out, 0.25, 0.5), RED, tol=12)
    assert_color(pixel_at(out, 0.75, 0.5), GREEN, tol=12)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d16.png")
    with Image.open(tmp_path / "d16.png") as raw:
        assert raw.mode.startswith("I")  # really stored as 16-bit
    out = np.asarray(load_rgb(tmp_path / "d16.png")).astype(int)
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_tiff(tmp_path):
    arr = np.linspace(0, 65535, 16).astype(np.uint16).reshape(4, 4)
    Image.fromarray(arr).save(tmp_path / "d16.tif")
    out = np.asarray(load_rgb(tmp_path / "d16.tif")).astype(int)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert (np.diff(out[..., 0].ravel()) >= 0).all()  # ordering kept, no wrap-around


def test_float_tiff(tmp_path):
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tif")
    out = np.asarray(load_rgb(tmp_path / "f.tif")).astype(int)
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])


def test_1bit_bilevel(tmp_path):
    img = Image.new("1", (8, 2), 0)
    img.paste(1, (4, 0, 8, 2))
    img.save(tmp_path / "b.png")
    out = np.asarray(load_rgb(tmp_path / "b.png"))
    assert_color(out[0, 0], (0, 0, 0))
    assert_color(out[0, 7], WHITE)


@pytest.mark.parametrize("orientation,transpose", [(3, Image.ROTATE_180), (6, Image.ROTATE_270), (8, Image.ROTATE_90)])
def test_exif_orientation_is_applied(tmp_path, orientation, transpose):
    stored = quadrants(64, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "rot.jpg", quality=95, exif=exif)
    out = load_rgb(tmp_path / "rot.jpg")
    expected = stored.transpose(transpose)
    assert out.size == expected.size
    for fx, fy in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]:
        assert_color(pixel_at(out, fx, fy), pixel_at(expected, fx, fy), tol=12)


def test_exif_orientation_6_means_the_left_edge_ends_on_top(tmp_path):
    """A phone photo stored sideways (orientation 6) comes out portrait, its stored left side up."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = RED  # stored left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    out = load_rgb(tmp_path / "phone.jpg")
    assert out.size == (20, 40)  # W x H: now portrait
    assert_color(pixel_at(out, 0.5, 0.25), RED, tol=12)
    assert_color(pixel_at(out, 0.5, 0.75), (0, 0, 0), tol=12)


def test_load_rgb_bytes_matches_file(tmp_path):
    quadrants().save(tmp_path / "q.png")
    a = np.asarray(load_rgb(tmp_path / "q.png"))
    b = np.asarray(load_rgb_bytes((tmp_path / "q.png").read_bytes()))
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- broken files


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


BROKEN = {
    "zero.jpg": (b"", "zero-byte"),
    "random.png": (bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)), "not an image"),
    "notes_renamed.jpg": (b"these are my notes, not a photo\n" * 5, "not an image"),
    "notes.txt": (b"plain text\n", "not an image"),
    "truncated.jpg": (None, "corrupt or truncated"),
    "bad_header.png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ""),
}


@pytest.fixture
def broken_dir(tmp_path):
    for name, (data, _) in BROKEN.items():
        if data is None:
            data = _jpeg_bytes()[:600]
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_gives_a_reason_not_an_exception(broken_dir, name):
    reason = check_image(broken_dir / name)
    assert reason, f"{name} was accepted as an image"
    assert reason.startswith(BROKEN[name][1])


def test_truncated_jpeg_raises_from_load_rgb(broken_dir):
    with pytest.raises((OSError, ValueError, SyntaxError)):
        load_rgb(broken_dir / "truncated.jpg")


def test_missing_file_is_a_reason(tmp_path):
    assert check_image(tmp_path / "gone.jpg").startswith("unreadable")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("L", (50, 50)).save(tmp_path / "big.png")
    assert check_image(tmp_path / "big.png") is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2,500 px now counts as a bomb
    assert check_image(tmp_path / "big.png") == f"too many pixels (over {MAX_PIXELS:,})"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # between the warning and error limits
    assert check_image(tmp_path / "big.png").startswith("too many pixels")


def test_verify_files_reports_every_bad_file_and_caches(broken_dir, tmp_path_factory):
    good = broken_dir / "good.png"
    quadrants().save(good)
    paths = [str(p) for p in sorted(broken_dir.iterdir())]
    first = verify_files(paths, workers=1)
    assert set(first) == set(paths)
    assert first[str(good)] is None
    assert all(first[p] for p in paths if p != str(good))
    # Same answers from the cache; a file that changes on disk is checked again.
    assert verify_files(paths, workers=1) == first
    quadrants().save(broken_dir / "zero.jpg", "JPEG")
    again = verify_files(paths, workers=1)
    assert again[str(broken_dir / "zero.jpg")] is None


def test_verify_files_parallel_matches_serial(tmp_path):
    for i in range(210):
        if i % 50 == 7:
            (tmp_path / f"{i:03d}.png").write_bytes(b"broken")
        else:
            Image.new("L", (8, 8), i).save(tmp_path / f"{i:03d}.png")
    paths = [str(p) for p in sorted(tmp_path.iterdir())]
    parallel = verify_files(paths, workers=2, use_cache=False)
    serial = verify_files(paths, workers=1, use_cache=False)
    assert parallel == serial
    assert sorted(p for p, r in parallel.items() if r) == [
        str(tmp_path / f"{i:03d}.png") for i in (7, 57, 107, 157, 207)
    ]


@pytest.mark.parametrize(
    "name,hidden",
    [
        (".DS_Store", True),
        (".ipynb_checkpoints", True),
        ("._photo.jpg", True),
        ("__MACOSX", True),
        ("photo.jpg", False),
        ("2", False),
    ],
)
def test_hidden_names(name, hidden):
    assert is_hidden(name) is hidden
