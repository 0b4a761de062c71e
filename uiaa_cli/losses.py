"""The four losses of docs/maths.md, each paired with its activation, on 2-set and M-set targets.

Every loss takes the network's raw outputs ``(B, K)`` and the targets ``(B, K)`` and returns the
mean over the batch of a per-image loss:

- ``ce``    ``-sum_m y_m log t_m`` with ``t = softmax(outputs)`` (computed with ``log_softmax``);
- ``emd``   ``sqrt(mean_m (CDF_y - CDF_t)_m^2)`` with ``t = softmax(outputs)`` (r = 2);
- ``mse``   ``1/2 sum_m (y_m - t_m)^2`` with ``t = outputs`` (linear);
- ``huber`` ``sum_m h(y_m - t_m)`` with ``t = outputs`` and ``h`` the smooth L1 of Fast R-CNN with
  threshold 1/9 on each element: ``h(d) = d^2 / (2/9)`` for ``|d| < 1/9``, else ``|d| - 1/18``.
  Summed over the outputs like ``mse`` (the per-image loss of one target vector), then averaged.

``activate`` turns outputs into the model's prediction (probabilities for softmax models, the raw
outputs for linear ones); ``metrics.predicted_score`` turns that into a score and std.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ce", "mse", "huber", "emd")
HUBER_THRESHOLD = 1.0 / 9.0
# sqrt has an infinite slope at 0; a tiny floor keeps EMD's gradient finite for a perfect prediction.
EMD_EPS = 1e-12


def cross_entropy(outputs: Tensor, target: Tensor) -> Tensor:
    return -(target * F.log_softmax(outputs, dim=1)).sum(dim=1).mean()


def squared_error(outputs: Tensor, target: Tensor) -> Tensor:
    return 0.5 * (outputs - target).pow(2).sum(dim=1).mean()


def huber(outputs: Tensor, target: Tensor) -> Tensor:
    per_element = F.smooth_l1_loss(outputs, target, reduction="none", beta=HUBER_THRESHOLD)
    return per_element.sum(dim=1).mean()


def earth_movers(outputs: Tensor, target: Tensor) -> Tensor:
    diff = torch.cumsum(target, dim=1) - torch.cumsum(F.softmax(outputs, dim=1), dim=1)
    return (diff.pow(2).mean(dim=1) + EMD_EPS).sqrt().mean()


LOSS_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": cross_entropy, "mse": squared_error, "huber": huber, "emd": earth_movers,
}


def loss_function(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss called ``name`` (one of ``LOSSES``); it applies the activation itself."""
    try:
        return LOSS_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def activate(outputs: Tensor, activation: str) -> Tensor:
    """The prediction a model's outputs stand for: ``softmax`` probabilities or ``linear`` values."""
    if activation == "softmax":
        return F.softmax(outputs.float(), dim=1)
    if activation == "linear":
        return outputs.float()
    raise ValueError(f"unknown activation {activation!r}")
