"""``uiaa dedupe``: planted near-duplicates are found across two caches; distinct photos are not paired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_uiaa
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from uiaa_cli.pixels.dedupe import area_matrix, close_hashes, features
from uiaa_cli.tables.table import read_table

PLANTED = 20


def natural(rng: np.random.Generator, h: int = 192, w: int = 256) -> Image.Image:
    """A photo-like picture: coloured 1/f^a noise (the power spectrum of natural scenes) with a few
    soft-edged shapes on it, so unrelated pictures share the statistics of real photos."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    shape = (h, w // 2 + 1)
    common = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    channels = [np.fft.irfft2((0.6 * common + 0.4 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))
                              / f ** rng.uniform(0.9, 1.4), s=(h, w)) for _ in range(3)]
    x = np.stack(channels, -1)
    x = 128 + 50 * (x - x.mean()) / x.std() + rng.uniform(-40, 40, 3)
    image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    return image


def planted_copy(image: Image.Image) -> Image.Image:
    """Resized to 90 %, cropped by 3 % (1.5 % off each side); saved at JPEG quality 50 by the caller."""
    w, h = image.size
    image = image.resize((round(w * 0.9), round(h * 0.9)), Image.Resampling.BILINEAR)
    w, h = image.size
    dx, dy = round(w * 0.015), round(h * 0.015)
    return image.crop((dx, dy, w - dx, h - dy))


def write_set(folder: Path, name: str, pictures: dict[str, tuple[Image.Image, int]]) -> Path:
    """JPEGs in ``folder/img`` and ``folder/name.csv``, a labels table made by ``uiaa labels``."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(pictures))
    lines = ["image," + ",".join(map(str, range(1, 11)))]
    for image_id, (picture, quality) in pictures.items():
        picture.save(folder / "img" / f"{image_id}.jpg", quality=quality)
        lines.append(f"img/{image_id}.jpg," + ",".join(map(str, rng.integers(1, 20, 10))))
    (folder / f"{name}-counts.csv").write_text("\n".join(lines) + "\n")
    done = run_uiaa("labels", folder / f"{name}-counts.csv", "-o", folder / f"{name}.csv")
    assert done.returncode == 0, done.stderr
    return folder / f"{name}.csv"


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """train: 260 distinct pictures; test: 140 others plus copies of 20 train pictures."""
    folder = tmp_path_factory.mktemp("dedupe")
    rng = np.random.default_rng(7)
    train = {f"tr{k:03d}": (natural(rng), 90) for k in range(260)}
    test = {f"te{k:03d}": (natural(rng), 90) for k in range(140)}
    for k in range(PLANTED):
        test[f"copy{k:02d}"] = (planted_copy(train[f"tr{k * 13:03d}"][0]), 50)
    return write_set(folder, "train", train), write_set(folder, "test", test)


def cached(labels: Path, size: int) -> Path:
    out = labels.with_name(f"{labels.stem}-{size}.h5")
    if not out.exists():
        done = run_uiaa("cache", labels, "--size", size, "--workers", "1", "-o", out)
        assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("size", [64, 128])
def test_planted_copies_are_found_between_two_caches(sets: tuple[Path, Path], size: int) -> None:
    train, test = (cached(p, size) for p in sets)
    done = run_uiaa("dedupe", test, train)
    assert done.returncode == 0, done.stderr
    found = read_table("-", data=done.stdout)
    assert found.names == ["image_a", "image_b", "distance", "similarity"]
    pairs = set(zip(found["image_a"].tolist(), found["image_b"].tolist(), strict=True))
    planted = {(f"img/copy{k:02d}.jpg", f"img/tr{k * 13:03d}.jpg") for k in range(PLANTED)}
    assert planted <= pairs, sorted(planted - pairs)
    assert len(pairs - planted) <= 1, sorted(pairs - planted)  # at most one false pair of 160 x 260
    assert (found["distance"] <= 12).all() and (found["similarity"] >= 0.9).all()
    assert np.all(np.diff(found["distance"]) >= 0)  # closest first
    assert f"160 images of {test} against 260 of {train}: {len(pairs)} near-duplicate pairs" in done.stderr.decode()


def test_a_clean_split_is_dedupe_then_labels_exclude(sets: tuple[Path, Path], tmp_path: Path) -> None:
    """The README's two commands: the pairs table, given to --exclude, leaves out exactly the planted
    pairs' images; the split made of what is left has no near-duplicate across it."""
    train, test = (cached(p, 64) for p in sets)
    dupes = tmp_path / "dupes.csv"
    assert run_uiaa("dedupe", test, train, "-o", dupes).returncode == 0
    counts = sets[0].with_name("train-counts.csv")
    clean = tmp_path / "clean.csv"
    done = run_uiaa("labels", counts, "--exclude", dupes, "-o", clean)
    assert done.returncode == 0, done.stderr
    assert f"240 out, {PLANTED} left out ({PLANTED} in --exclude)" in done.stderr.decode()
    kept = set(read_table(clean)["image"].tolist())
    originals = {f"img/tr{k * 13:03d}.jpg" for k in range(PLANTED)}
    assert len(kept) == 240 and not kept & originals
    assert kept == {f"img/tr{k:03d}.jpg" for k in range(260)} - originals
    clean_cache = tmp_path / "clean.h5"
    assert run_uiaa("cache", clean, "--images", sets[0].parent, "--size", 64, "--workers", "1",
                    "-o", clean_cache).returncode == 0
    again = run_uiaa("dedupe", test, clean_cache)
    assert again.returncode == 0 and len(read_table("-", data=again.stdout)) == 0, again.stderr


def test_within_a_labels_table_decoded_without_torch(sets: tuple[Path, Path], tmp_path: Path,
                                                     no_torch: dict) -> None:
    """One labels table holding both sets: pairs within it, decoded in worker processes, no torch."""
    train, test = (read_table(p) for p in sets)
    both = tmp_path / "both.csv"
    with both.open("w") as f:
        f.write("image," + ",".join(map(str, range(1, 11))) + "\n")
        for t in (train, test):
            rsd = t.matrix([str(b) for b in range(1, 11)])
            for name, row in zip(t["image"].tolist(), rsd, strict=True):
                f.write(name + "," + ",".join(str(int(round(v * 1000))) for v in row) + "\n")
    labels = tmp_path / "labels.csv"
    assert run_uiaa("labels", both, "-o", labels).returncode == 0
    (sets[0].parent / "img" / "te005.jpg").write_bytes(b"not a jpeg")  # one unreadable image: named, left out
    try:
        done = run_uiaa("dedupe", labels, "--images", sets[0].parent, "--workers", "2", "-o", tmp_path / "d.tsv",
                        env=no_torch)
    finally:
        natural(np.random.default_rng(0)).save(sets[0].parent / "img" / "te005.jpg")
    assert done.returncode == 1, done.stderr  # some images unreadable, the rest done
    assert "left out img/te005.jpg" in done.stderr.decode()
    found = read_table(tmp_path / "d.tsv")
    pairs = set(zip(found["image_a"].tolist(), found["image_b"].tolist(), strict=True))
    planted = {tuple(sorted((f"img/copy{k:02d}.jpg", f"img/tr{k * 13:03d}.jpg"))) for k in range(PLANTED)}
    assert planted <= {tuple(sorted(p)) for p in pairs}
    assert len(pairs) <= PLANTED + 1


def test_bad_inputs_are_one_line_errors(sets: tuple[Path, Path], tmp_path: Path) -> None:
    done = run_uiaa("dedupe", tmp_path / "missing.h5")
    assert done.returncode == 2 and done.stderr.decode().startswith("uiaa dedupe: error:")
    done = run_uiaa("dedupe", sets[0], "--max-distance", "99")
    assert done.returncode == 2 and "--max-distance" in done.stderr.decode()


# ------------------------------------------------------------------------------------- the maths


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 70), st.integers(0, 70), st.integers(0, 20))
def test_close_hashes_equals_a_plain_popcount(seed: int, n: int, m: int, radius: int) -> None:
    """Every pair within the radius and no other, by Python's bin().count against tiles of any size."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, 4, dtype=np.uint64)
    # Few distinct bases with a few flipped bits: plenty of close pairs.
    def draw(k: int) -> np.ndarray:
        flips = np.zeros(k, dtype=np.uint64)
        for _ in range(6):
            flips |= (rng.random(k) < 0.3).astype(np.uint64) << np.uint64(rng.integers(0, 64))
        return base[rng.integers(0, 4, k)] ^ flips

    a, b = draw(n), draw(m)
    tile = int(rng.integers(1, 200))
    for other in (None, b):
        i, j, d = close_hashes(a, other, radius, threads=2, tile=tile)
        got = {(int(x), int(y), int(z)) for x, y, z in zip(i, j, d, strict=True)}
        second = a if other is None else other
        want = {(x, y, bin(int(a[x]) ^ int(second[y])).count("1")) for x in range(len(a)) for y in range(len(second))
                if (other is not None or y > x) and bin(int(a[x]) ^ int(second[y])).count("1") <= radius}
        assert got == want
        assert len(i) == len(got)  # no pair twice


def test_area_matrix_averages_cells() -> None:
    m = area_matrix(96, 32)  # 3 pixels a cell
    assert np.allclose(m.sum(axis=1), 1)
    assert np.allclose(m[0, :3], 1 / 3) and np.allclose(m[0, 3:], 0)
    m = area_matrix(48, 32)  # 1.5 pixels a cell: the middle pixel split in half
    assert np.allclose(m[0, :2], [2 / 3, 1 / 3]) and np.allclose(m[1, 1:3], [1 / 3, 2 / 3])


def test_hash_is_the_median_split_of_the_low_dct() -> None:
    """Against a DCT written out by hand (the cosine basis), on a 32 px image (no downsampling)."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (1, 32, 32)).astype(np.uint8)
    k = np.arange(32)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / 64) * np.sqrt(2 / 32)
    basis[0] /= np.sqrt(2)
    low = (basis @ grey[0].astype(np.float64) @ basis.T)[:8, :8].reshape(64)[1:]
    bits = "".join("1" if v > np.median(low) else "0" for v in low) + "0"
    assert int(features(grey).hashes[0]) == int(bits, 2)
