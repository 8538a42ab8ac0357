"""Collapse diagnostics of stage 1: similarity spread, predicted classes, ζ ownership, loss-term shares.

:func:`stage1_diagnostics` turns one explained batch into numbers that :class:`~scripts.engine.EpochLog`
averages per epoch (console and TensorBoard, ``stage1/<name>``); :func:`collapse_warnings` reads those
epoch means at push time and says what looks collapsed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from scripts.prototypes import soft_class_coefficients, soft_ownership

__all__ = ["PREDICTION_FLOOR", "SPREAD_FLOOR", "collapse_warnings", "stage1_diagnostics", "term_shares"]

SPREAD_FLOOR = 1e-2
"""Below this mean per-prototype spread of S across a batch, the similarities carry no information."""
PREDICTION_FLOOR = 1e-3
"""A class predicted for fewer than this share of the training batches counts as never predicted."""


def term_shares(lambdas: Mapping[str, float], terms: Mapping[str, Tensor | float]) -> dict[str, float]:
    """Each weighted term's share of the total magnitude: ``|l_t term_t| / sum_t |l_t term_t|``.

    Args:
        lambdas: weight of each term (terms without a weight are skipped).
        terms: unweighted terms.
    """
    weighted = {name: abs(float(lambdas[name]) * float(value)) for name, value in terms.items() if name in lambdas}
    total = sum(weighted.values())
    return {name: value / total if total > 0 else 0.0 for name, value in weighted.items()}


def stage1_diagnostics(
    similarities: Tensor, logits: Tensor, classifier_weight: Tensor, lambdas: Mapping[str, float],
    terms: Mapping[str, Tensor | float],
) -> dict[str, float]:
    """Per-batch collapse read-outs (all plain floats).

    Keys: ``spread_min|mean|max`` (over prototypes, of the std of S over the batch; 0 for a batch of
    one), ``pred_<c>`` (share of the batch predicted as class c), ``owned_<c>`` (prototypes that class c
    holds with ζ > 0.5, Eq. 7) and ``share_<term>`` (:func:`term_shares`).

    Args:
        similarities: S (B, K_total).
        logits: (B, C).
        classifier_weight: (C, K_total).
        lambdas: the stage-1 loss weights.
        terms: the stage-1 loss's unweighted terms.
    """
    similarities = similarities.detach().float()
    spread = similarities.std(dim=0, unbiased=False) if similarities.shape[0] > 1 else similarities[0] * 0
    predicted = torch.bincount(logits.detach().argmax(dim=1), minlength=logits.shape[1]).float() / logits.shape[0]
    owned = soft_ownership(soft_class_coefficients(classifier_weight)).sum(dim=1).float()
    names = list(terms)
    values = torch.stack(
        [spread.min(), spread.mean(), spread.max(), *predicted, *owned,
         *(torch.as_tensor(terms[n], dtype=torch.float32, device=spread.device) for n in names)]
    ).tolist()  # one device-to-host copy per batch
    classes = logits.shape[1]
    out = dict(zip(("spread_min", "spread_mean", "spread_max"), values[:3]))
    out.update({f"pred_{c}": values[3 + c] for c in range(classes)})
    out.update({f"owned_{c}": values[3 + classes + c] for c in range(classes)})
    shares = term_shares(lambdas, dict(zip(names, values[3 + 2 * classes :])))
    out.update({f"share_{name}": value for name, value in shares.items()})
    return out


def collapse_warnings(metrics: Mapping[str, float], class_names: Sequence[str], prefix: str = "stage1/") -> list[str]:
    """Warnings from an epoch's stage-1 means: spread below :data:`SPREAD_FLOOR`, or one class predicted always.

    Args:
        metrics: ``engine.state.metrics`` after :class:`~scripts.engine.EpochLog` wrote the epoch.
        class_names: names in label order.
        prefix: key prefix of the stage-1 entries.
    """
    warnings = []
    spread = metrics.get(f"{prefix}spread_mean")
    if spread is not None and spread < SPREAD_FLOOR:
        warnings.append(
            f"similarity collapse: the mean per-prototype spread of S across a batch is {spread:.4f} "
            f"(< {SPREAD_FLOOR}); every case looks alike to every prototype."
        )
    shares = {name: metrics.get(f"{prefix}pred_{c}") for c, name in enumerate(class_names)}
    never = [name for name, share in shares.items() if share is not None and share < PREDICTION_FLOOR]
    if never and len(never) == len(class_names) - 1:
        only = next(name for name in class_names if name not in never)
        warnings.append(f"prediction collapse: every training case of the last stage-1 epoch was predicted {only}.")
    return warnings
