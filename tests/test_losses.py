"""The losses of SPEC §1 against hand computations in numpy, and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from uiaa_cli.losses import HUBER_THRESHOLD, activate, loss_function
from uiaa_cli.training.data import epoch_batches, flip_mask
from uiaa_cli.training.settings import default_lr, default_weight_decay, epoch_lr, parse_lr

floats = st.floats(-6, 6, allow_nan=False, width=64)


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (B, K) and targets (B, K) that are distributions (2-set or M-set shaped)."""
    b = draw(st.integers(1, 5))
    k = draw(st.sampled_from([2, 5, 10]))
    outputs = draw(arrays(np.float64, (b, k), elements=floats))
    weights = draw(arrays(np.float64, (b, k), elements=st.floats(0, 1, width=64)))
    weights[:, 0] += 1e-3  # never all zero
    return outputs, weights / weights.sum(axis=1, keepdims=True)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def torch_loss(name: str, outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(loss_function(name)(torch.from_numpy(outputs), torch.from_numpy(targets)))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_cross_entropy_is_minus_sum_y_log_softmax(batch: tuple[np.ndarray, np.ndarray]) -> None:
    outputs, y = batch
    expected = np.mean([-sum(y[n, m] * math.log(softmax(outputs)[n, m]) for m in range(y.shape[1]))
                        for n in range(len(y))])
    assert torch_loss("ce", outputs, y) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_mse_is_half_the_summed_squares(batch: tuple[np.ndarray, np.ndarray]) -> None:
    outputs, y = batch
    expected = np.mean([0.5 * sum((y[n, m] - outputs[n, m]) ** 2 for m in range(y.shape[1])) for n in range(len(y))])
    assert torch_loss("mse", outputs, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def huber_by_hand(d: float, t: float = 1 / 9) -> float:
    return 0.5 * d * d / t if abs(d) < t else abs(d) - 0.5 * t


@settings(max_examples=60, deadline=None)
@given(batches())
def test_huber_has_threshold_one_ninth_per_element(batch: tuple[np.ndarray, np.ndarray]) -> None:
    outputs, y = batch
    expected = np.mean([sum(huber_by_hand(outputs[n, m] - y[n, m]) for m in range(y.shape[1]))
                        for n in range(len(y))])
    assert torch_loss("huber", outputs, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_huber_is_quadratic_inside_and_linear_outside_the_threshold() -> None:
    y = np.zeros((1, 2))
    inside = torch_loss("huber", np.array([[0.05, 0.0]]), y)
    outside = torch_loss("huber", np.array([[1.0, 0.0]]), y)
    assert inside == pytest.approx(0.5 * 0.05**2 * 9)
    assert outside == pytest.approx(1.0 - 0.5 * HUBER_THRESHOLD)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_emd_is_rms_of_the_cdf_difference(batch: tuple[np.ndarray, np.ndarray]) -> None:
    outputs, y = batch
    t = softmax(outputs)
    per_image = []
    for n in range(len(y)):
        cy = ct = 0.0
        total = 0.0
        for m in range(y.shape[1]):
            cy += y[n, m]
            ct += t[n, m]
            total += (cy - ct) ** 2
        per_image.append(math.sqrt(total / y.shape[1]))
    assert torch_loss("emd", outputs, y) == pytest.approx(np.mean(per_image), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", ["ce", "emd"])
def test_softmax_losses_are_smallest_at_the_target(name: str) -> None:
    y = np.array([[0.1, 0.2, 0.7]])
    at_target = torch_loss(name, np.log(y), y)
    elsewhere = torch_loss(name, np.log(np.array([[0.3, 0.3, 0.4]])), y)
    assert at_target < elsewhere
    if name == "emd":
        assert at_target == pytest.approx(0.0, abs=1e-5)
        out = torch.tensor(np.log(y), requires_grad=True)
        loss_function(name)(out, torch.from_numpy(y)).backward()
        assert torch.isfinite(out.grad).all()  # a perfect prediction must not give NaN gradients


def test_cross_entropy_gradient_is_softmax_minus_target() -> None:
    y = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    out = torch.tensor([[0.1, -2.0, 3.0], [50.0, -50.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss_function("ce")(out, y).backward()
    assert torch.allclose(out.grad, (torch.softmax(out, 1) - y) / 2)


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    y = np.array([[0.0, 1.0]])
    assert math.isfinite(torch_loss("ce", np.array([[1e4, -1e4]]), y))


def test_activation_pairs() -> None:
    out = torch.tensor([[1.0, 2.0, -1.0]])
    assert torch.allclose(activate(out, "softmax").sum(1), torch.ones(1))
    assert torch.equal(activate(out, "linear"), out)
    with pytest.raises(ValueError):
        loss_function("l1")


def test_default_learning_rates_follow_the_unified_formulation() -> None:
    assert default_lr("gauss-mv", "ce", "resnet50") == pytest.approx((1e-3, 1e-4))
    assert default_lr("rsd", "emd", "resnet50") == pytest.approx((1e-3, 1e-4))
    assert default_lr("binary", "ce", "resnet18") == pytest.approx((1e-2, 1e-3))
    assert default_lr("soft", "mse", "resnet50") == pytest.approx((10**-2.5, 10**-3.5))
    assert default_lr("gauss-nv", "huber", "resnet50") == pytest.approx((10**-1.5, 10**-2.5))
    assert default_lr("gauss-mv", "ce", "vgg16") == pytest.approx((1e-4, 1e-5))
    assert default_lr("soft", "ce", "resnet50") == pytest.approx((1e-2, 1e-3))
    assert default_lr("soft", "mse", "vgg16") < default_lr("soft", "mse", "resnet50")
    assert default_lr("rsd", "huber", "vgg16") < default_lr("rsd", "huber", "resnet50")
    # From scratch the linear heads want a far smaller step (huber at 10^-1.5 diverges), ce a larger one.
    assert default_lr("gauss-nv", "huber", "resnet18", "none") == pytest.approx((1e-3, 1e-4))
    assert default_lr("soft", "mse", "resnet18", "none") == pytest.approx((1e-3, 1e-4))
    assert default_lr("gauss-mv", "ce", "resnet18", "none") == pytest.approx((1e-2, 1e-3))
    assert default_lr("binary", "emd", "vgg16", "none") == pytest.approx((1e-3, 1e-4))
    assert default_lr("gauss-mv", "ce", "resnet18", "weights.pt") == pytest.approx((1e-3, 1e-4))


def test_default_weight_decay_by_architecture() -> None:
    assert default_weight_decay("resnet50") == 1e-4 and default_weight_decay("resnet18") == 1e-4
    assert default_weight_decay("vgg16") == 5e-4 and default_weight_decay("vgg16_bn") == 5e-4


def test_per_epoch_exponential_decay() -> None:
    rates = [epoch_lr(1e-3, 1e-4, e, 5) for e in range(5)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert np.allclose(np.diff(np.log(rates)), np.log(0.1) / 4)
    assert epoch_lr(1e-3, 1e-4, 0, 1) == 1e-3
    assert parse_lr("1e-3,1e-4") == (1e-3, 1e-4)
    assert parse_lr("0.01") == (0.01, 0.01)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 200), st.integers(2, 40), st.integers(0, 3), st.integers(1, 4))
def test_epoch_batches_cover_every_row_once_per_epoch(n: int, batch: int, epoch: int, world: int) -> None:
    shards = [epoch_batches(n, batch, 7, epoch, rank=r, world=world) for r in range(world)]
    rows = np.concatenate([np.concatenate(s) if s else np.zeros(0, int) for s in shards])
    padded = -(-n // world) * world
    # Only padding repeats rows; a dropped last batch of one image loses at most one row per rank.
    assert padded - world <= len(rows) <= padded
    assert set(rows.tolist()) <= set(range(n))
    if world == 1 and n % batch != 1:
        assert sorted(rows.tolist()) == list(range(n))
    assert all(np.all(np.diff(b) >= 0) for s in shards for b in s)  # sorted for HDF5 reads
    assert [b.tolist() for b in epoch_batches(n, batch, 7, epoch)] == \
           [b.tolist() for b in epoch_batches(n, batch, 7, epoch)]  # a function of (seed, epoch)


def test_flips_are_a_function_of_seed_epoch_and_step() -> None:
    a = flip_mask(64, 1, 2, 3)
    assert np.array_equal(a, flip_mask(64, 1, 2, 3))
    assert not np.array_equal(a, flip_mask(64, 1, 2, 4))
    assert 10 < a.sum() < 54
