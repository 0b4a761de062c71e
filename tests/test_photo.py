"""Photographers' formats in: RAW (a real DNG, written by tifffile, read by LibRaw) and HEIC (pillow-heif)
in every command that reads images, orientation, previews, Pillow's draft, and the photo extra's absence."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from photo_files import SIZE, save_dng, save_heic, save_jpeg, scene, shared_model
from PIL import Image

from uiaa_cli.pixels import dedupe, images
from uiaa_cli.pixels.images import ImageError, decode_image

pytest.importorskip("rawpy")
pytest.importorskip("pillow_heif")
pytest.importorskip("tifffile")


@pytest.fixture(autouse=True)
def pillow_only(monkeypatch):
    """Resize with Pillow here as the commands do (torch's kernel, used once a test process has loaded
    torch, differs by a grey level), so pixels compare exactly."""
    monkeypatch.setenv("UIAA_RESIZE", "pillow")


def pillow_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """What decode_image's Pillow path does after decoding: a bilinear warp to size x size."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


def asymmetric(width: int = 96, height: int = 64) -> np.ndarray:
    """Red top-left quarter, blue bottom-right, grey elsewhere: any turn or mirror shows."""
    a = np.full((height, width, 3), 128, np.uint8)
    a[: height // 2, : width // 2] = (230, 20, 20)
    a[height // 2:, width // 2:] = (20, 20, 230)
    return a


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return shared_model(tmp_path_factory)


@pytest.fixture(scope="module")
def shoot(tmp_path_factory, model) -> dict:
    """A shoot as a photographer has it: every format, two broken RAWs, and a model."""
    root = tmp_path_factory.mktemp("shoot")
    folder = root / "shoot"
    folder.mkdir()
    save_jpeg(folder / "a.JPG", scene(1))
    Image.fromarray(scene(2)).save(folder / "b.png")
    save_heic(folder / "c.HEIC", scene(3))
    save_dng(folder / "d.dng", scene(4), preview=True)
    save_dng(folder / "e.DNG", scene(5), preview=False)
    (folder / "f.CR2").write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(200))  # a CR2 header, no data
    (folder / "g.NEF").write_bytes(b"")
    (folder / "notes.txt").write_text("not a photo")
    return {"root": root, "folder": folder, "model": model}


def fake_missing(tmp_path: Path, *modules: str) -> dict:
    """An environment in which importing ``modules`` fails, as on an install without the extra."""
    fake = tmp_path / "missing"
    for name in modules:
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is absent in this test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(fake), str(Path(__file__).resolve().parents[1])])}


def scored(stdout: bytes) -> dict[str, float]:
    return {os.path.basename(line.split("\t")[0]): float(line.split("\t")[1])
            for line in stdout.decode().splitlines()}


def test_every_file_of_a_shoot_is_scored_or_named(shoot, uiaa):
    """JPEG, PNG, HEIC, DNG with and without preview scored; the corrupt and empty RAWs one line each."""
    result = uiaa("predict", shoot["folder"], "-m", shoot["model"], cwd=shoot["root"])
    assert result.returncode == 1, result.stderr.decode()
    assert set(scored(result.stdout)) == {"a.JPG", "b.png", "c.HEIC", "d.dng", "e.DNG"}
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2, lines
    assert any("f.CR2" in line and "LibRaw" in line for line in lines), lines
    assert any("g.NEF" in line and "empty" in line for line in lines), lines


def test_without_the_photo_extra_each_raw_and_heic_names_it(shoot, uiaa, tmp_path):
    result = uiaa("predict", shoot["folder"], "-m", shoot["model"], cwd=shoot["root"],
                  env=fake_missing(tmp_path, "rawpy", "pillow_heif"))
    assert result.returncode == 1, result.stderr.decode()
    assert set(scored(result.stdout)) == {"a.JPG", "b.png"}
    lines = result.stderr.decode().splitlines()
    named = {os.path.basename(line.split(": ")[1]) for line in lines}
    assert named == {"c.HEIC", "d.dng", "e.DNG", "f.CR2", "g.NEF"}, lines
    for line in lines:
        if "g.NEF" not in line:  # an empty file is empty, extra or not
            assert "pip install 'uiaa[photo]'" in line, line


def test_dng_preview_is_decoded_not_the_mosaic(tmp_path):
    """The preview's picture, not the sensor's, with Pillow's draft and the RAW's flip (6: 90 deg clockwise)."""
    mosaic, preview = scene(10), asymmetric(160, 120)
    path = save_dng(tmp_path / "p.dng", mosaic, preview=True, orientation=6, preview_pixels=preview)
    out = decode_image(path, 32)
    jpeg = np.asarray(Image.open(io.BytesIO(_jpeg(preview))).convert("RGB"))
    expected = np.rot90(pillow_resize(jpeg, 32), -1)  # the draft (1/2 at 160 -> 32 px) differs a little
    assert np.abs(out.astype(int) - expected).mean() < 3
    assert out[0, -1, 0] > 200 and out[-1, 0, 2] > 200  # red top-right, blue bottom-left: turned clockwise


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_dng_without_preview_is_demosaiced_at_half_size(tmp_path):
    import rawpy

    pixels = scene(11)
    path = save_dng(tmp_path / "r.dng", pixels, preview=False)
    with rawpy.imread(str(path)) as raw:
        half = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
    assert half.shape[:2] == (pixels.shape[0] // 2, pixels.shape[1] // 2)
    np.testing.assert_array_equal(decode_image(path, 24), pillow_resize(half, 24))
    # and it is the scene: the grey values correlate with those of the picture the mosaic was made of
    grey = decode_image(path, 24).mean(axis=2).ravel()
    truth = pillow_resize(pixels, 24).mean(axis=2).ravel()
    assert np.corrcoef(grey, truth)[0, 1] > 0.9


def test_a_preview_smaller_than_the_model_is_not_upsampled(tmp_path):
    """A 96 x 64 (black) preview: used for a 32 px model, but a 128 px model gets the demosaiced mosaic."""
    import rawpy

    path = save_dng(tmp_path / "s.dng", scene(12, 320, 240), preview=True,
                    preview_pixels=np.zeros((64, 96, 3), np.uint8))
    assert decode_image(path, 32).max() == 0
    with rawpy.imread(str(path)) as raw:
        half = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
    np.testing.assert_array_equal(decode_image(path, 128), pillow_resize(half, 128))


def test_heic_rotation_applied_once(tmp_path):
    """A phone's HEIC with orientation 6: libheif turns it; uiaa does not turn it again."""
    picture = asymmetric()
    path = save_heic(tmp_path / "o.heic", picture, orientation=6)
    out = decode_image(path, 32)
    expected = pillow_resize(np.ascontiguousarray(np.rot90(picture, -1)), 32)
    assert np.abs(out.astype(int) - expected).mean() < 6
    assert np.abs(out.astype(int) - pillow_resize(picture, 32)).mean() > 30
    assert out[0, -1, 0] > 180 and out[-1, 0, 2] > 180


def test_a_24_megapixel_jpeg_is_not_fully_decoded(tmp_path, monkeypatch):
    """Pillow's draft: libjpeg scales by 1/8 in the DCT, so a 6000 x 4000 photo is decoded at 750 x 500
    for a 224 px model; a JPEG preview inside a DNG likewise."""
    big = np.asarray(Image.fromarray(scene(13, 300, 200)).resize((6000, 4000)))
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=85)
    dng = save_dng(tmp_path / "big.dng", scene(13, 600, 400), preview=True,
                   preview_pixels=np.asarray(Image.fromarray(scene(13, 300, 200)).resize((600, 400))))
    seen = []
    real = images._to_rgb
    monkeypatch.setattr(images, "_to_rgb", lambda im: (seen.append(im.size), real(im))[1])
    decode_image(path, 224)
    decode_image(dng, 64)
    assert seen == [(750, 500), (150, 100)]


def test_orientation_of_a_jpeg_still_applied(tmp_path):
    path = save_jpeg(tmp_path / "o.jpg", asymmetric(), orientation=6, quality=95)
    out = decode_image(path, 32)
    assert out[0, -1, 0] > 180 and out[-1, 0, 2] > 180


def test_cache_and_dedupe_read_raw_and_heic(tmp_path, uiaa):
    """Every command that reads images: cache and dedupe (a labels table's images) find a DNG, its
    HEIC copy and its JPEG copy, and cache stores what decode_image gives."""
    from uiaa_cli.pixels.cache import CacheReader

    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = scene(14)
    save_dng(folder / "one.dng", pixels)
    save_heic(folder / "one.heic", pixels)
    save_jpeg(folder / "one.jpg", pixels)
    save_jpeg(folder / "other.jpg", scene(15))
    counts, labels = tmp_path / "counts.csv", tmp_path / "labels.csv"
    counts.write_text("image,1,2,3,4,5\none.dng,0,1,2,1,0\none.heic,1,1,1,1,1\none.jpg,0,0,1,2,1\n"
                      "other.jpg,2,1,0,0,0\n")
    assert uiaa("labels", counts, "-o", labels).returncode == 0
    result = uiaa("cache", labels, "--images", folder, "-o", tmp_path / "c.h5", "--size", SIZE, "--workers", 1,
                  "--store", "raw")
    assert result.returncode == 0, result.stderr.decode()
    with CacheReader(str(tmp_path / "c.h5")) as reader:
        stored = reader.read(np.arange(len(reader)))
        names = list(reader.table["image"].astype(str))
    for name in ("one.dng", "one.heic"):
        np.testing.assert_array_equal(stored[names.index(name)], decode_image(folder / name, SIZE))
    result = uiaa("dedupe", labels, "--images", folder, "--workers", 1)
    assert result.returncode == 0, result.stderr.decode()
    pairs = {frozenset(line.split(",")[:2]) for line in result.stdout.decode().splitlines()[1:]}
    assert pairs == {frozenset(p) for p in (("one.dng", "one.heic"), ("one.dng", "one.jpg"), ("one.heic", "one.jpg"))}


def test_dedupe_similarity_stays_a_correlation():
    """int8 rounding made a picture's correlation with itself 1.0002; it is clamped to [-1, 1]."""
    rng = np.random.default_rng(0)
    found = dedupe.features(rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8))
    raw = np.einsum("nk,nk->n", found.vectors.astype(np.int32), found.vectors.astype(np.int32)) / 127.0**2
    assert raw.max() > 1  # the rounding this test is about happens
    same = dedupe.similarity(found.vectors, found.vectors)
    assert same.max() <= 1.0 and np.isclose(same, np.minimum(raw, 1.0)).all()
    opposite = dedupe.similarity(found.vectors, -found.vectors)
    assert opposite.min() >= -1.0


def test_a_raw_member_of_a_shard_is_named_not_decoded_as_tiff(tmp_path):
    from uiaa_cli.predict.inputs import tar_samples

    dng = save_dng(tmp_path / "x.dng", scene(16))
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(dng, arcname="0001.dng")
        tar.add(save_jpeg(tmp_path / "y.jpg", scene(17)), arcname="0002.jpg")
    samples = list(tar_samples(str(shard)))
    assert samples[0][2][0] == "error" and "RAW" in samples[0][2][1]
    assert samples[1][2][0] == "tar"


def test_unreadable_raw_is_an_image_error(tmp_path):
    path = tmp_path / "x.ARW"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ImageError, match="LibRaw"):
        decode_image(path, 32)


def test_avif_as_pillow_reads_it(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    path = tmp_path / "a.avif"
    Image.fromarray(asymmetric()).save(path, quality=90)
    assert ".avif" in images.readable_extensions() and [p.name for p in images.list_images(tmp_path)] == ["a.avif"]
    assert np.abs(decode_image(path, 32).astype(int) - pillow_resize(asymmetric(), 32)).mean() < 6
