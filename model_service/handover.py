"""Out-of-scope detection: when the model should hand a query to a human instead of answering.

The score is the negative free energy of the logits, `logsumexp(logits)` (Liu et al., "Energy-based
Out-of-distribution Detection", NeurIPS 2020): a query far from every intent gets low logits
everywhere, which the softmax hides by renormalising. On our validation data it separated CLINC150
`oos_val` from banking77 clearly better than the top softmax probability (light model, 1-point
in-scope budget: 95% of oos_val handed over against 87%).

The threshold is chosen on validation data only: the highest score whose in-scope accuracy cost
stays within `max_accuracy_loss` (1 point in training), or lower, the lowest that hands over
`target_recall` of the out-of-scope validation queries, when a target under 1.0 is given. Training
aims at 1.0: CLINC150's `oos_val` has only 100 queries, too few for a stable percentile, while the
in-scope budget is measured on a thousand.
"""

from __future__ import annotations

import math

import torch

__all__ = ["choose_threshold", "score"]


def score(logits: torch.Tensor) -> torch.Tensor:
    """(batch, labels) logits -> (batch,) in-scope scores; below the threshold means hand over."""
    return torch.logsumexp(logits.float(), dim=-1)


def _budget_threshold(scores: torch.Tensor, correct: torch.Tensor, max_accuracy_loss: float) -> float:
    """The highest threshold whose in-scope accuracy cost stays within the budget.

    A correct in-scope answer whose score falls below the threshold goes to a human: it counts as lost.
    """
    base = float(correct.float().mean())
    best = float(scores.min())
    for threshold in torch.unique(scores).tolist():
        kept = float((correct & (scores >= threshold)).float().mean())
        if base - kept <= max_accuracy_loss + 1e-12:
            best = max(best, threshold)
    return best


def choose_threshold(
    in_scope_scores: torch.Tensor,
    in_scope_correct: torch.Tensor,
    out_of_scope_scores: torch.Tensor,
    *,
    max_accuracy_loss: float,
    target_recall: float,
) -> float:
    """The hand-over threshold: `target_recall` of out-of-scope queries, within the in-scope budget."""
    if in_scope_scores.numel() == 0:
        raise ValueError("no in-scope validation examples to choose a threshold on")
    if out_of_scope_scores.numel() == 0:
        raise ValueError("no out-of-scope validation examples to choose a threshold on")
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    budget = _budget_threshold(in_scope_scores, in_scope_correct, max_accuracy_loss)
    ranked = torch.sort(out_of_scope_scores.float()).values
    # The smallest threshold with at least target_recall of the scores strictly below it: just
    # above the ceil(target_recall * n)-th lowest score.
    needed = ranked[math.ceil(target_recall * len(ranked)) - 1]
    reaching = float(torch.nextafter(needed, torch.tensor(float("inf"))))
    return min(budget, reaching)
