"""images.py: decoding of every colour mode, corrupt files, bombs, EXIF, path resolution, listing."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from uiaa_cli.pixels import images
from uiaa_cli.pixels.images import ImageError, decode_image, list_images, resolve_image


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def stripes(width: int = 96, height: int = 32) -> Image.Image:
    """Red | green | blue vertical thirds."""
    a = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    a[:, :third, 0] = 255
    a[:, third:2 * third, 1] = 255
    a[:, 2 * third:, 2] = 255
    return Image.fromarray(a)


def halves(width: int = 64, height: int = 32) -> Image.Image:
    """Left half black, right half white."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, width // 2:] = 255
    return Image.fromarray(a)


# ----------------------------------------------------------------------------- colour modes


def test_rgb_warped_to_a_square_without_crop(tmp_path):
    out = decode_image(save(stripes(), tmp_path / "s.png"), 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    # Each third of the width keeps its colour: a centre crop would have lost red and blue.
    np.testing.assert_array_equal(out[:, 3], [[255, 0, 0]] * 30)
    np.testing.assert_array_equal(out[:, 15], [[0, 255, 0]] * 30)
    np.testing.assert_array_equal(out[:, 26], [[0, 0, 255]] * 30)


def test_bytes_and_path_give_the_same_pixels(tmp_path):
    path = save(stripes(), tmp_path / "s.jpg")
    np.testing.assert_array_equal(decode_image(path, 24), decode_image(path.read_bytes(), 24))
    np.testing.assert_array_equal(decode_image(path, 24), decode_image(str(path), 24))


def test_greyscale(tmp_path):
    out = decode_image(save(Image.new("L", (40, 30), 100), tmp_path / "g.png"), 16)
    assert (out == 100).all()


def test_palette_and_palette_with_transparency(tmp_path):
    im = Image.new("P", (40, 40), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.paste(1, (20, 0, 40, 40))
    out = decode_image(save(im, tmp_path / "p.png"), 40)
    np.testing.assert_array_equal(out[5, 5], [10, 20, 30])
    np.testing.assert_array_equal(out[5, 35], [200, 100, 50])
    out = decode_image(save(im, tmp_path / "pt.png", transparency=0), 40)
    np.testing.assert_array_equal(out[5, 5], [255, 255, 255])  # the transparent colour: white
    np.testing.assert_array_equal(out[5, 35], [200, 100, 50])


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., 0] = 255  # red everywhere
    a[:, :16, 3] = 0  # left: fully transparent
    a[:, 16:, 3] = 128  # right: half transparent
    out = decode_image(save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"), 32).astype(int)
    np.testing.assert_array_equal(out[4, 4], [255, 255, 255])
    assert out[4, 28, 0] == 255 and abs(out[4, 28, 1] - 127) <= 1 and abs(out[4, 28, 2] - 127) <= 1


def test_la_composited_on_white(tmp_path):
    a = np.zeros((32, 32, 2), np.uint8)
    a[..., 0] = 40
    a[:, 16:, 1] = 255  # right opaque, left transparent
    out = decode_image(save(Image.fromarray(a, "LA"), tmp_path / "la.png"), 32)
    np.testing.assert_array_equal(out[4, 4], [255, 255, 255])
    np.testing.assert_array_equal(out[4, 28], [40, 40, 40])


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    path = save(im, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = decode_image(path, 16).astype(int)
    assert out[..., 0].min() > 240 and out[..., 1:].max() < 15


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    a = np.zeros((32, 32), np.uint16)
    a[:, :16] = 40000
    a[:, 16:] = 65535
    path = save(Image.fromarray(a), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = decode_image(path, 32)
    np.testing.assert_array_equal(out[4, 4], [156, 156, 156])  # 40000 / 257; Pillow's convert gives 255
    np.testing.assert_array_equal(out[4, 28], [255, 255, 255])


@pytest.mark.parametrize("orientation, top, left", [
    (1, None, 0), (3, None, 255), (6, 0, None), (8, 255, None),
])
def test_exif_orientation_applied(tmp_path, orientation, top, left):
    """Stored: black left half, white right half. Orientation 6 turns it 90 degrees clockwise for
    display (black on top), 8 anticlockwise (white on top), 3 by 180 degrees (white on the left)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(halves(), tmp_path / f"o{orientation}.jpg", quality=95, exif=exif.tobytes())
    out = decode_image(path, 32).astype(int)
    if top is not None:
        assert abs(out[2].mean() - top) < 20 and abs(out[-3].mean() - (255 - top)) < 20
    if left is not None:
        assert abs(out[:, 2].mean() - left) < 20 and abs(out[:, -3].mean() - (255 - left)) < 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    path = save(im, tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((24, 24), Image.BILINEAR))
    assert np.abs(decode_image(path, 24).astype(int) - expected).max() <= 1


def test_jpeg_draft_close_to_a_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((800, 600), Image.BICUBIC)
    path = save(smooth, tmp_path / "big.jpg", quality=90)
    full = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR)).astype(int)
    assert np.abs(decode_image(path, 64).astype(int) - full).mean() < 2.0


def test_torch_and_pillow_resizers_agree(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # loaded in this process: decode_image resizes with its kernel
    path = save(Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)),
                tmp_path / "r.png")
    monkeypatch.delenv("UIAA_RESIZE", raising=False)
    monkeypatch.setattr(images, "_PILLOW_ONLY", False)  # an ONNX Scorer earlier in this process sets it
    assert images._torch() is not None
    fast = decode_image(path, 33)
    monkeypatch.setenv("UIAA_RESIZE", "pillow")
    assert images._torch() is None
    slow = decode_image(path, 33)
    assert np.abs(slow.astype(int) - fast).max() <= 1
    assert fast.flags["WRITEABLE"] and slow.flags["WRITEABLE"] and slow.flags["C_CONTIGUOUS"]


def test_torch_resize_without_its_private_entry_point(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    path = save(Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)),
                tmp_path / "r.png")
    direct = decode_image(path, 33)

    kernel = torch._C._nn._upsample_bilinear2d_aa

    def without_out(*args, **kwargs):  # as a torch whose private kernel takes no ``out``
        if "out" in kwargs:
            raise TypeError("unexpected keyword argument 'out'")
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch._C._nn, "_upsample_bilinear2d_aa", without_out)
    fallback = decode_image(path, 33)
    assert fallback.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(fallback, direct)


# ----------------------------------------------------------------------------- bad files


def noisy_jpeg(path: Path, side: int = 64) -> Path:
    rng = np.random.default_rng(0)
    return save(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)), path, quality=90)


def test_truncated_jpeg(tmp_path):
    data = noisy_jpeg(tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as e:
        decode_image(tmp_path / "cut.jpg", 32)
    assert str(tmp_path / "cut.jpg") in str(e.value) and "\n" not in str(e.value)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        decode_image(tmp_path / "empty.jpg", 32)
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", 32)


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(tmp_path / "notes.jpg", 32)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        decode_image(tmp_path / "nope.jpg", 32)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_header_refused(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(tmp_path / "bomb.png", 32)


@pytest.mark.parametrize("side", [40, 64])  # 1600 px: over the limit (a warning in Pillow); 4096: over 2x
def test_decompression_bomb_limit_enforced(tmp_path, monkeypatch, side):
    path = noisy_jpeg(tmp_path / "a.jpg", side)
    decode_image(path, 16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(path, 16)


# ----------------------------------------------------------------------------- paths


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    for name in ("a.png", "b.jpeg", "c.jpg", "sub/d.jpg", "x.v2"):
        (r / name).write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    return r


def test_resolve_names_and_bare_ids(root):
    real = Path(os.path.realpath(root))
    assert resolve_image(root, "a") == real / "a.png"
    assert resolve_image(root, "b") == real / "b.jpeg"
    assert resolve_image(root, "c") == real / "c.jpg"
    assert resolve_image(root, "sub/d.jpg") == real / "sub/d.jpg"
    assert resolve_image(root, "sub/d") == real / "sub/d.jpg"
    assert resolve_image(root, "x.v2") == real / "x.v2"
    assert resolve_image(root, "sub/../a.png") == real / "a.png"


def test_resolve_missing(root):
    with pytest.raises(ImageError, match="no such image.*e.jpg, e.jpeg, e.png"):
        resolve_image(root, "e")
    with pytest.raises(ImageError, match=r"no such image under \S+$") as e:  # a name with an extension
        resolve_image(root, "sub/e.png")
    assert "also tried" not in str(e.value) and e.value.where == "sub/e.png"


@pytest.mark.parametrize("name", ["../outside.jpg", "../outside", "sub/../../outside.jpg", ".."])
def test_resolve_refuses_dotdot(root, name):
    with pytest.raises(ImageError, match="escapes"):
        resolve_image(root, name)


def test_resolve_refuses_absolute(root):
    with pytest.raises(ImageError, match="absolute"):
        resolve_image(root, str(root / "a.png"))
    with pytest.raises(ImageError, match="absolute"):
        resolve_image(root, "/etc/passwd")


def test_resolve_refuses_symlink_out_and_allows_symlink_in(root):
    (root / "link.jpg").symlink_to(root.parent / "outside.jpg")
    (root / "sublink").symlink_to(root.parent)
    (root / "inside.jpg").symlink_to(root / "c.jpg")
    with pytest.raises(ImageError, match="outside the image root"):
        resolve_image(root, "link.jpg")
    with pytest.raises(ImageError, match="outside the image root"):
        resolve_image(root, "sublink/outside.jpg")
    assert resolve_image(root, "inside") == Path(os.path.realpath(root)) / "c.jpg"


def test_resolve_refuses_folders(root):
    (root / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        resolve_image(root, "dir.jpg")


# ----------------------------------------------------------------------------- listing


def test_list_images(tmp_path):
    for name in ("b.jpg", "a.PNG", "z/c.webp", "z/y/d.tif", "notes.txt", "cache.h5", ".hidden.jpg",
                 ".git/e.jpg", "f.jpeg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.PNG", "b.jpg", "f.jpeg", "z/c.webp", "z/y/d.tif"]


def test_list_images_not_a_folder(tmp_path):
    with pytest.raises(ImageError, match="not a folder"):
        list_images(tmp_path / "nope")


def test_images_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, uiaa_cli.pixels.images, uiaa_cli.pixels.cache_build; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_error_is_one_line_and_a_uiaa_error(tmp_path):
    from uiaa_cli.errors import UiaaError

    (tmp_path / "t.jpg").write_bytes(io.BytesIO(b"GIF89a garbage").getvalue())
    with pytest.raises(UiaaError) as e:
        decode_image(tmp_path / "t.jpg", 8)
    assert len(str(e.value).splitlines()) == 1
