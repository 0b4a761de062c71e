"""``uiaa rate``: stars into XMP sidecars and JPEGs, merged never replaced, read back by exiftool
(python-exiv2 where exiftool is absent), hand-set ratings kept, atomic writes, dry runs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from photo_files import DARKTABLE_SIDECAR, read_back, save_dng, save_jpeg, scene

from uiaa_cli.catalogue import xmp
from uiaa_cli.catalogue.stars import DEFAULT_STARS, parse_stars, stars
from uiaa_cli.errors import UiaaError
from uiaa_cli.pixels.images import decode_image

pytest.importorskip("exiv2")
pytest.importorskip("defusedxml")

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DARKTABLE = "{http://darktable.sf.net/}"


def predictions(folder: Path, scores: dict[str, float]) -> Path:
    """A predictions table as ``uiaa predict -o`` writes one (image, score), naming photos in ``folder``."""
    path = folder / "scores.csv"
    path.write_text("image,score\n" + "".join(f"{folder / name},{score}\n" for name, score in scores.items()))
    return path


def expected_stars(scores: dict[str, float]) -> dict[str, int]:
    """Stars by rank, computed plainly: the best 5 % (rounded to whole photos) 5 stars, the next 15 % 4, ..."""
    ranked = sorted(scores, key=lambda n: -scores[n])
    ends = [round(share * len(ranked)) for share in (0.05, 0.20, 0.50, 0.80)]
    return {name: 5 - sum(rank >= end for end in ends) for rank, name in enumerate(ranked)}


@pytest.fixture
def shoot(tmp_path) -> tuple[Path, dict[str, float]]:
    folder = tmp_path / "shoot"
    folder.mkdir()
    scores = {}
    for i in range(20):
        name = f"IMG_{i:04d}.jpg"
        save_jpeg(folder / name, scene(i, 48, 32))
        scores[name] = 3.0 + 0.1 * ((i * 7) % 20)  # distinct scores in a shuffled order
    return folder, scores


def test_stars_by_rank_into_new_sidecars_read_back_by_exiftool(shoot, uiaa):
    folder, scores = shoot
    result = uiaa("rate", predictions(folder, scores))
    assert result.returncode == 0, result.stderr.decode()
    sidecars = sorted(folder.glob("*.jpg.xmp"))
    assert len(sidecars) == 20
    found = read_back(sidecars)
    want = expected_stars(scores)
    assert {name[:-4]: rating for name, (rating, _) in found.items()} == {n: str(s) for n, s in want.items()}
    assert all(label is None for _, label in found.values())  # no labels without --cull
    assert "20 sidecars (20 new, 0 merged)" in result.stderr.decode()
    again = uiaa("rate", predictions(folder, scores))  # a second run changes nothing
    assert again.returncode == 0 and "0 sidecars" in again.stderr.decode() and "20 unchanged" in again.stderr.decode()


def subtree(path: Path, tag: str) -> bytes:
    """The canonical XML (C14N 2.0) of the first element ``tag`` of a sidecar, after a parse."""
    from xml.etree import ElementTree

    from defusedxml.ElementTree import parse

    element = parse(path).getroot().find(f".//{tag}")
    return ElementTree.canonicalize(ElementTree.tostring(element)).encode()


def description(path: Path) -> dict[str, str]:
    from defusedxml.ElementTree import parse

    return dict(parse(path).getroot().find(f".//{RDF}Description").attrib)


def test_a_darktable_sidecar_keeps_its_history_and_only_the_rating_changes(tmp_path, uiaa):
    folder = tmp_path / "shoot"
    folder.mkdir()
    save_dng(folder / "IMG_0001.dng", scene(1, 64, 48))
    sidecar = folder / "IMG_0001.dng.xmp"
    # a rating uiaa wrote before (uiaa:Rating is the same): this run may change it
    text = DARKTABLE_SIDECAR.format(rating=2, image="IMG_0001.dng").replace(
        'xmlns:darktable="http://darktable.sf.net/"',
        f'xmlns:darktable="http://darktable.sf.net/"\n    xmlns:uiaa="{xmp.NAMESPACE}"').replace(
        'xmp:Rating="2"', 'xmp:Rating="2"\n   uiaa:Rating="2"')
    sidecar.write_text(text)
    before = {tag: subtree(sidecar, tag) for tag in (f"{DARKTABLE}history", f"{DARKTABLE}masks_history",
                                                     "{http://purl.org/dc/elements/1.1/}subject")}
    attributes = description(sidecar)
    scores = {"IMG_0001.dng": 5.0, "other.jpg": 4.0}
    save_jpeg(folder / "other.jpg", scene(2, 48, 32))
    result = uiaa("rate", predictions(folder, scores), "--stars", "cut:4.5,4.2,4.1,4.05")
    assert result.returncode == 0, result.stderr.decode()
    assert read_back([sidecar])[sidecar.name] == ("5", None)
    for tag, canonical in before.items():  # the history, byte for byte after a parse
        assert subtree(sidecar, tag) == canonical, tag
    after = description(sidecar)
    ours = {k for k in after if k.startswith("{" + xmp.NAMESPACE)} | {"{http://ns.adobe.com/xap/1.0/}Rating"}
    assert {k: v for k, v in after.items() if k not in ours} == {k: v for k, v in attributes.items() if k not in ours}
    assert after["{http://ns.adobe.com/xap/1.0/}Rating"] == "5"


def test_a_hand_set_rating_survives_unless_overwrite(tmp_path, uiaa):
    folder = tmp_path / "shoot"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        save_jpeg(folder / name, scene(len(name), 48, 32))
    # a: rated 2 by hand in darktable; b: rejected by hand; c: the camera's own rating, no sidecar yet
    (folder / "a.jpg.xmp").write_text(DARKTABLE_SIDECAR.format(rating=2, image="a.jpg"))
    (folder / "b.jpg.xmp").write_text(DARKTABLE_SIDECAR.format(rating=-1, image="b.jpg"))
    subprocess_exiv2_rating(folder / "c.jpg", 1)
    table = predictions(folder, {"a.jpg": 9.0, "b.jpg": 8.0, "c.jpg": 7.0})
    rule = ["--stars", "cut:6,5,4,3"]  # every one of them 5 stars by its score
    kept = uiaa("rate", table, *rule, "--dry-run")
    rows = {Path(r["image"]).name: r for r in csv.DictReader(io.StringIO(kept.stdout.decode()))}
    assert [rows[n]["rating"] for n in ("a.jpg", "b.jpg", "c.jpg")] == ["2", "-1", "1"]
    assert all("hand-set rating kept" in rows[n]["action"] for n in rows)
    assert not (folder / "c.jpg.xmp").exists()  # a dry run writes nothing
    result = uiaa("rate", table, *rule)
    assert result.returncode == 0, result.stderr.decode()
    found = read_back([folder / "a.jpg.xmp", folder / "b.jpg.xmp", folder / "c.jpg.xmp"])
    assert [found[n][0] for n in ("a.jpg.xmp", "b.jpg.xmp", "c.jpg.xmp")] == ["2", "-1", "1"]
    assert "kept 3 hand-set ratings" in result.stderr.decode()
    forced = uiaa("rate", table, *rule, "--overwrite")
    assert forced.returncode == 0, forced.stderr.decode()
    found = read_back([folder / "a.jpg.xmp", folder / "b.jpg.xmp", folder / "c.jpg.xmp"])
    assert [found[n][0] for n in ("a.jpg.xmp", "b.jpg.xmp", "c.jpg.xmp")] == ["5", "5", "5"]


def subprocess_exiv2_rating(path: Path, rating: int) -> None:
    """A rating embedded in a JPEG by a camera (or another app), written by python-exiv2 directly."""
    import exiv2

    image = exiv2.ImageFactory.open(str(path))
    image.readMetadata()
    image.xmpData()["Xmp.xmp.Rating"] = str(rating)
    image.writeMetadata()


def test_base_sidecar_shared_by_a_raw_and_a_jpeg_is_the_raws(tmp_path, uiaa):
    folder = tmp_path / "shoot"
    folder.mkdir()
    save_dng(folder / "IMG_0001.dng", scene(3, 64, 48))
    save_jpeg(folder / "IMG_0001.jpg", scene(3, 64, 48))
    save_jpeg(folder / "IMG_0002.jpg", scene(4, 64, 48))
    scores = {"IMG_0001.dng": 6.0, "IMG_0001.jpg": 2.0, "IMG_0002.jpg": 4.0}
    result = uiaa("rate", predictions(folder, scores), "--sidecar", "base", "--stars", "cut:5.5,5,4.5,3.5",
                  "-o", tmp_path / "plan.csv")
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(p.name for p in folder.glob("*.xmp")) == ["IMG_0001.xmp", "IMG_0002.xmp"]
    found = read_back([folder / "IMG_0001.xmp", folder / "IMG_0002.xmp"])
    assert found["IMG_0001.xmp"][0] == "5"  # the RAW's 6.0, not the JPEG's 2.0
    assert found["IMG_0002.xmp"][0] == "2"
    rows = {Path(r["image"]).name: r for r in csv.DictReader(open(tmp_path / "plan.csv"))}
    assert rows["IMG_0001.jpg"]["action"] == "shares IMG_0001.xmp with IMG_0001.dng"
    assert rows["IMG_0001.jpg"]["stars"] == "5" and float(rows["IMG_0001.jpg"]["score"]) == 6.0
    assert rows["IMG_0001.jpg"]["rating"] == "5"  # what the shared sidecar holds


def test_embedded_into_jpegs_pixels_and_exif_kept_other_formats_get_sidecars(tmp_path, uiaa):
    folder = tmp_path / "shoot"
    folder.mkdir()
    jpeg = save_jpeg(folder / "a.jpg", scene(5, 48, 32), when="2024:05:01 10:00:00")
    from PIL import Image

    Image.fromarray(scene(6, 48, 32)).save(folder / "b.png")
    pixels = decode_image(jpeg, 32)
    result = uiaa("rate", predictions(folder, {"a.jpg": 7.0, "b.png": 3.0}), "--embed", "--stars", "cut:6,5,4,3.5")
    assert result.returncode == 0, result.stderr.decode()
    assert read_back([jpeg])["a.jpg"][0] == "5"
    assert read_back([folder / "b.png.xmp"])["b.png.xmp"][0] == "1"
    assert not (folder / "a.jpg.xmp").exists()
    np.testing.assert_array_equal(decode_image(jpeg, 32), pixels)
    with Image.open(jpeg) as im:
        assert im.getexif().get_ifd(0x8769)[0x9003] == "2024:05:01 10:00:00"


def test_dry_run_prints_the_plan_and_touches_nothing(shoot, uiaa):
    folder, scores = shoot
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = uiaa("rate", predictions(folder, scores), "--dry-run")
    assert result.returncode == 0, result.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(result.stdout.decode())))
    assert len(rows) == 20 and {r["action"] for r in rows} == {"new"}
    want = expected_stars(scores)
    assert {Path(r["image"]).name: int(r["rating"]) for r in rows} == want
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "scores.csv"} == \
        {n: b for n, b in before.items() if n != "scores.csv"}


def test_a_failed_merge_leaves_the_old_sidecar_whole(tmp_path, monkeypatch):
    sidecar = tmp_path / "IMG.dng.xmp"
    sidecar.write_text(DARKTABLE_SIDECAR.format(rating=3, image="IMG.dng"))
    old = sidecar.read_bytes()

    def crash(before: str, after: str, where: str) -> None:
        raise KeyboardInterrupt  # the run dies after exiv2 wrote the copy, before the rename

    monkeypatch.setattr(xmp, "check_merge", crash)
    with pytest.raises(KeyboardInterrupt):
        xmp.update(sidecar, {xmp.RATING: "5"})
    assert sidecar.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["IMG.dng.xmp"]  # no temporary file left behind


def test_the_merge_check_refuses_a_write_that_loses_a_property(tmp_path):
    before = DARKTABLE_SIDECAR.format(rating=3, image="IMG.dng")
    lost = before.replace('   darktable:history_end="2"\n', "")
    with pytest.raises(UiaaError, match="would lose"):
        xmp.check_merge(before, lost, "IMG.dng.xmp")
    moved = before.replace('xmp:Rating="3"', 'xmp:Rating="5"')  # uiaa's own key: allowed
    xmp.check_merge(before, moved, "IMG.dng.xmp")


def test_a_sidecar_declaring_entities_is_refused_and_left_alone(tmp_path, uiaa):
    folder = tmp_path / "shoot"
    folder.mkdir()
    save_jpeg(folder / "a.jpg", scene(7, 48, 32))
    save_jpeg(folder / "b.jpg", scene(8, 48, 32))
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="&b;"/>'
            '</rdf:RDF></x:xmpmeta>\n')
    (folder / "a.jpg.xmp").write_text(bomb)
    result = uiaa("rate", predictions(folder, {"a.jpg": 5.0, "b.jpg": 4.0}))
    assert result.returncode == 1
    lines = [line for line in result.stderr.decode().splitlines() if "a.jpg.xmp" in line]
    assert len(lines) == 1 and "entities" in lines[0], result.stderr.decode()
    assert (folder / "a.jpg.xmp").read_text() == bomb
    assert read_back([folder / "b.jpg.xmp"])["b.jpg.xmp"][0] is not None


def test_stars_rules_against_a_plain_count():
    rng = np.random.default_rng(3)
    scores = rng.normal(5, 1, 1000)
    got = stars(scores, parse_stars(DEFAULT_STARS))
    assert np.bincount(got, minlength=6)[1:].tolist() == [200, 300, 300, 150, 50]
    order = np.argsort(-scores)
    assert (np.diff(got[order]) <= 0).all()  # better scores, never fewer stars
    cuts = stars(np.array([7.0, 6.0, 5.99, 5.5, 5.0, 4.5, 4.49, -3.0]), parse_stars("cut:6,5.5,5,4.5"))
    assert cuts.tolist() == [5, 5, 4, 4, 3, 2, 1, 1]
    ties = stars(np.array([2.0, 2.0, 1.0, 1.0]), parse_stars("top:50%,0%,0%,0%,50%"))
    assert ties.tolist() == [5, 5, 1, 1]
    for bad in ("top:50%,50%", "top:10%,10%,10%,10%,10%", "cut:4,5,6,7", "cut:6,5", "best:3", "top:a,b,c,d,e"):
        with pytest.raises(UiaaError):
            parse_stars(bad)
