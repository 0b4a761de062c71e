"""The maths of SPEC §1: targets checked against scipy and hand-worked numbers, and property tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from uiaa_cli.errors import UiaaError
from uiaa_cli.targets.labels import (
    KINDS,
    LabelSettings,
    build_labels,
    default_threshold,
    discretised_gaussian,
    make_targets,
    moments,
)

AVA_BINS = np.arange(1.0, 11.0)
SPEC_COUNTS = np.array([[2, 8, 19, 36, 76, 52, 16, 9, 3, 2]], dtype=float)


def test_spec_example_released_code_divisor():
    """SPEC §1: with exp(-d^2/var), these counts give mu 5.1211, var 2.2768 and this gauss-mv vector."""
    _, _, mu, var = moments(SPEC_COUNTS, AVA_BINS)
    assert mu[0] == pytest.approx(5.1211, abs=5e-5)
    assert var[0] == pytest.approx(2.2768, abs=5e-5)
    p = make_targets(SPEC_COUNTS, AVA_BINS, LabelSettings(divisor="var")).targets[0]
    expected = [0, 0.0001, 0.0102, 0.1753, 0.5220, 0.2683, 0.0238, 0.0004, 0, 0]
    np.testing.assert_allclose(np.round(p, 4), expected, atol=1e-12)


def reference_gauss_mv(counts: np.ndarray, lam: float, cap: float, factor: float) -> np.ndarray:
    """Independent: mean and variance by hand, then scipy's normal pdf on the bins, normalised."""
    votes = np.repeat(AVA_BINS, counts.astype(int))
    mu, var = votes.mean(), votes.var()  # numpy's var is the population variance
    var_z = min((1 - lam) * var, cap)
    pdf = stats.norm.pdf(AVA_BINS, loc=mu, scale=np.sqrt(var_z * factor / 2))
    return pdf / pdf.sum()


@pytest.mark.parametrize("divisor, factor", [("2var", 2.0), ("var", 1.0)])
@pytest.mark.parametrize("lam, cap", [(0.5, 1.5), (0.0, 10.0), (0.8, 1.5), (0.3, 0.2)])
def test_gauss_mv_against_scipy(divisor, factor, lam, cap):
    rng = np.random.default_rng(7)
    counts = np.vstack([SPEC_COUNTS, rng.integers(0, 60, size=(20, 10))]).astype(float)
    got = make_targets(counts, AVA_BINS, LabelSettings(lam=lam, cap=cap, divisor=divisor)).targets
    for row, p in zip(counts, got):
        np.testing.assert_allclose(p, reference_gauss_mv(row, lam, cap, factor), atol=1e-12)


def test_default_divisor_differs_from_released_code():
    two = make_targets(SPEC_COUNTS, AVA_BINS, LabelSettings()).targets[0]
    one = make_targets(SPEC_COUNTS, AVA_BINS, LabelSettings(divisor="var")).targets[0]
    assert np.abs(two - one).max() > 0.05
    # the factor 2 makes a wider Gaussian: less mass on the mode
    assert two[4] < one[4]


def test_gauss_nv_uses_the_votes_variance():
    got = make_targets(SPEC_COUNTS, AVA_BINS, LabelSettings(kind="gauss-nv")).targets[0]
    np.testing.assert_allclose(got, reference_gauss_mv(SPEC_COUNTS[0], 0.0, np.inf, 2.0), atol=1e-12)


def test_binary_threshold_and_margin():
    # means: 5.0 (exactly the threshold), 5.5, 3.8, 7.0
    counts = np.zeros((4, 10))
    counts[0, 4] = 10
    counts[1, [4, 5]] = 5
    counts[2, [2, 3]] = [2, 8]
    counts[3, 6] = 3
    t = make_targets(counts, AVA_BINS, LabelSettings(kind="binary"))
    np.testing.assert_array_equal(t.targets, [[1, 0], [0, 1], [1, 0], [0, 1]])
    margin = make_targets(counts, AVA_BINS, LabelSettings(kind="binary", delta=1.0))
    np.testing.assert_array_equal(margin.keep, [False, False, True, True])
    assert margin.left_out_margin == 2
    custom = make_targets(counts, AVA_BINS, LabelSettings(kind="binary", threshold=6.0))
    np.testing.assert_array_equal(custom.targets[:, 1], [0, 0, 0, 1])


def test_default_threshold():
    assert default_threshold(AVA_BINS) == 5
    assert default_threshold(np.arange(1.0, 6.0)) == 3


def test_soft_and_rsd():
    soft = make_targets(SPEC_COUNTS, AVA_BINS, LabelSettings(kind="soft")).targets[0]
    assert soft[1] == pytest.approx(1142 / 223 / 10)  # sum b c / n / b_M
    rsd = make_targets(SPEC_COUNTS, AVA_BINS, LabelSettings(kind="rsd")).targets[0]
    np.testing.assert_allclose(rsd, SPEC_COUNTS[0] / 223)


def test_zero_variance_is_one_hot_for_every_gaussian_kind():
    counts = np.zeros((3, 10))
    counts[0, 0] = 5
    counts[1, 6] = 100
    counts[2, 9] = 1
    for kind in ("gauss-nv", "gauss-mv"):
        p = make_targets(counts, AVA_BINS, LabelSettings(kind=kind)).targets
        np.testing.assert_array_equal(p, np.eye(10)[[0, 6, 9]])


def test_lam_one_collapses_to_the_nearest_bin():
    p = make_targets(SPEC_COUNTS, AVA_BINS, LabelSettings(lam=1.0)).targets[0]
    np.testing.assert_array_equal(p, np.eye(10)[4])  # mean 5.12 is nearest to 5


def test_tiny_variance_is_stable():
    p = discretised_gaussian(np.array([5.3, 5.5]), np.array([1e-300, 1e-300]), AVA_BINS)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], np.eye(10)[4])
    np.testing.assert_allclose(p[1], (np.eye(10)[4] + np.eye(10)[5]) / 2)  # a tie splits


def test_settings_are_validated():
    for bad in (dict(kind="nope"), dict(lam=1.5), dict(lam=-0.1), dict(cap=0), dict(delta=-1), dict(divisor="x")):
        with pytest.raises(ValueError):
            LabelSettings(**bad)


@st.composite
def counts_and_bins(draw):
    m = draw(st.integers(2, 12))
    start = draw(st.sampled_from([0.0, 1.0, -2.0, 0.5]))
    step = draw(st.sampled_from([1.0, 0.5, 2.0]))
    bins = start + step * np.arange(m)
    rows = draw(st.integers(1, 6))
    counts = np.array(draw(st.lists(st.lists(st.integers(0, 500), min_size=m, max_size=m),
                                    min_size=rows, max_size=rows)), dtype=float)
    counts[counts.sum(axis=1) == 0, draw(st.integers(0, m - 1))] = 1
    return counts, bins


@settings(max_examples=150, deadline=None)
@given(counts_and_bins(), st.sampled_from(KINDS), st.floats(0, 1), st.floats(1e-6, 10),
       st.sampled_from(["2var", "var"]))
def test_targets_are_distributions(data, kind, lam, cap, divisor):
    counts, bins = data
    if kind == "soft" and bins[0] < 0:
        with pytest.raises(UiaaError):
            make_targets(counts, bins, LabelSettings(kind=kind))
        return
    t = make_targets(counts, bins, LabelSettings(kind=kind, lam=lam, cap=cap, divisor=divisor))
    assert np.all(np.isfinite(t.targets))
    np.testing.assert_allclose(t.targets.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(t.targets >= -1e-12)
    assert t.targets.shape[1] == (2 if kind in ("binary", "soft") else len(bins))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 12), st.integers(1, 1000), st.data())
def test_single_bin_votes_give_one_hot(m, n, data):
    bins = np.arange(1.0, m + 1)
    j = data.draw(st.integers(0, m - 1))
    counts = np.zeros((1, m))
    counts[0, j] = n
    for kind in ("gauss-nv", "gauss-mv", "rsd"):
        np.testing.assert_array_equal(make_targets(counts, bins, LabelSettings(kind=kind)).targets[0], np.eye(m)[j])


def test_reconstruction_error_is_small_on_ava(test_data):
    from uiaa_cli.targets.ratings import read_ratings

    r = read_ratings(str(test_data / "AVA_excerpt.txt"))
    t = make_targets(r.counts, r.bins, LabelSettings())
    assert t.reconstruction_error < 1e-3


def test_build_labels_table_columns_and_filters():
    images = np.array(["a", "b.jpg", "c"])
    counts = np.vstack([SPEC_COUNTS[0], SPEC_COUNTS[0], np.eye(10)[3] * 2])
    table, report = build_labels(images, counts, AVA_BINS, LabelSettings(), min_votes=5,
                                 exclude=np.array(["b"]))
    assert table.names[:4] == ["image", "votes", "mean", "std"]
    assert table.names[4:14] == [str(i) for i in range(1, 11)]
    assert table.names[14:] == [f"p_{i}" for i in range(1, 11)]
    np.testing.assert_array_equal(table["image"], ["a"])
    assert report.left_out == {"in --exclude": 1, "fewer than 5 votes": 1}
    assert table["std"][0] == pytest.approx(np.sqrt(2.2768), abs=1e-4)
    assert table.attrs["kind"] == "gauss-mv" and table.attrs["lam"] == 0.5


# ------------------------------------------------------------------ exact statistics (issue 9.3)


def fraction_moments(counts: np.ndarray, bins: np.ndarray) -> tuple[list[Fraction], list[Fraction]]:
    """Independent: mean and population variance of each row as exact rationals."""
    means, variances = [], []
    fb = [Fraction(float(b)) for b in bins]
    for row in counts.tolist():
        fc = [Fraction(float(c)) for c in row]
        n = sum(fc)
        mu = sum(c * b for c, b in zip(fc, fb)) / n
        means.append(mu)
        variances.append(sum(c * (b - mu) ** 2 for c, b in zip(fc, fb)) / n)
    return means, variances


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from([np.arange(1.0, 11.0), np.arange(1.0, 6.0), np.arange(0.0, 5.0) / 2 + 0.5,
                                   np.array([-3.0, 0.25, 1.0, 7.5]), np.array([0.1, 0.2, 0.7])]),
       st.sampled_from([10, 10**6, 10**12]))
def test_mean_and_variance_are_correctly_rounded(data, bins, top):
    rows = data.draw(st.integers(1, 8))
    counts = np.array(data.draw(st.lists(st.lists(st.integers(0, top), min_size=len(bins), max_size=len(bins))
                                         .filter(lambda r: sum(r) > 0), min_size=rows, max_size=rows)), dtype=float)
    _, _, mu, var = moments(counts, bins)
    means, variances = fraction_moments(counts, bins)
    assert mu.tolist() == [float(m) for m in means]
    assert var.tolist() == [float(v) for v in variances]


def test_fractional_counts_are_exact_too():
    counts = np.array([[0.5, 0.25, 0.25], [1e-3, 2.0, 3.5]])
    bins = np.array([1.0, 2.0, 3.0])
    means, variances = fraction_moments(counts, bins)
    _, _, mu, var = moments(counts, bins)
    assert mu.tolist() == [float(m) for m in means] and var.tolist() == [float(v) for v in variances]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=10, max_size=10), st.integers(2, 9))
def test_exact_mean_at_the_threshold_is_low(counts, t):
    """Counts balanced to average exactly t: binary says low (mean > t is false), whatever the votes."""
    c = np.array(counts, dtype=np.int64)
    excess = int(c @ (np.arange(1, 11) - t))  # sum of (b - t) over the votes
    if excess > 0:
        c[t - 2] += excess  # votes at t - 1 pull the mean down by exactly the excess
    elif excess < 0:
        c[t] -= excess  # votes at t + 1 push it up
    if c.sum() == 0:
        c[t - 1] = 1
    assert Fraction(int(c @ np.arange(1, 11)), int(c.sum())) == t
    target = make_targets(c[None].astype(float), AVA_BINS, LabelSettings("binary", threshold=float(t)))
    assert target.keep[0] and target.targets[0].tolist() == [1.0, 0.0]
    # with a margin of 1 the mean t + 1 is inside it: left out
    margin = make_targets(c[None].astype(float), AVA_BINS, LabelSettings("binary", threshold=float(t - 1), delta=1))
    assert not margin.keep[0]  # exact mean t = threshold + delta: neither high nor low


def ava_fractions(path: Path) -> tuple[list[str], list[Fraction]]:
    ids, means = [], []
    for line in path.read_text().splitlines():
        fields = line.split()
        c = [int(x) for x in fields[2:12]]
        ids.append(fields[1])
        means.append(Fraction(sum(b * n for b, n in zip(range(1, 11), c)), sum(c)))
    return ids, means


def test_real_ava_images_with_exact_mean_5_are_low(test_data):
    """Real AVA lines: every exact mean 5 is low, and every mean is float(Fraction) exactly."""
    from uiaa_cli.targets.ratings import read_ratings

    ids, means = ava_fractions(test_data / "AVA_excerpt.txt")
    r = read_ratings(str(test_data / "AVA_excerpt.txt"))
    assert r.images.tolist() == ids
    table, _ = build_labels(r.images, r.counts, r.bins, LabelSettings("binary"))
    fives = [i for i, m in enumerate(means) if m == 5]
    assert len(fives) == 50
    assert table["p_high"][fives].tolist() == [0.0] * 50
    assert table["mean"].tolist() == [float(m) for m in means]
    sixes = {ids[i] for i, m in enumerate(means) if m == 6}
    fours = {ids[i] for i, m in enumerate(means) if m == 4}
    kept, _ = build_labels(r.images, r.counts, r.bins, LabelSettings("binary", delta=1.0))
    kept_ids = dict(zip(kept["image"].tolist(), kept["p_high"].tolist()))
    assert len(sixes) == 34 and not (set(kept_ids) & sixes)  # 6 > 5 + 1 is false: inside the margin
    assert len(fours) == 3 and all(kept_ids[i] == 0.0 for i in fours)  # 4 <= 5 - 1: low


# ------------------------------------------------------------------ duplicate ids across chunks

ID = st.one_of(st.integers(0, 300).map(str),                    # plain numbers: the bitmap
               st.integers(0, 300).map(lambda i: f"{i:04d}"),   # leading zeros: hashed, not 42
               st.integers(0, 300).map(lambda i: f"{i}.jpg"),   # names: hashed
               st.sampled_from(["٣", "3", "x", "", "99999999999", str(1 << 26)]))  # non-ASCII, huge


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(ID, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_the_first_repeated_id_is_found_whatever_the_chunks(ids: list[str], cuts: list[int]) -> None:
    from uiaa_cli.targets.ratings import SeenImages

    seen_before: set[str] = set()
    expected = None  # (chunk, index within it) of the first id met twice, by a plain Python set
    bounds = [0, *sorted(min(c, len(ids)) for c in cuts), len(ids)]
    chunks = [ids[a:b] for a, b in zip(bounds, bounds[1:])]
    for c, chunk in enumerate(chunks):
        for i, name in enumerate(chunk):
            if name in seen_before:
                expected = (c, i)
                break
            seen_before.add(name)
        if expected:
            break
    seen, found = SeenImages(), None
    for c, chunk in enumerate(chunks):
        again = seen.add(np.array(chunk, dtype=str))
        if again is not None:
            found = (c, again)
            break
    assert found == expected
