"""The out-of-scope score and the threshold chosen on validation data."""

from __future__ import annotations

import pytest
import torch

from model_service.handover import allowed_losses, choose_threshold, score


def test_the_score_is_low_when_every_logit_is_low_even_if_one_wins_the_softmax() -> None:
    # Both rows put all softmax mass on label 0; only the energy tells the confident one apart.
    confident = torch.tensor([[9.0, 0.0, 0.0]])
    unsure = torch.tensor([[2.0, -7.0, -7.0]])
    assert float(confident.softmax(-1)[0, 0]) == pytest.approx(float(unsure.softmax(-1)[0, 0]), abs=1e-3)
    assert float(score(confident)) > float(score(unsure)) + 6


def test_the_threshold_hands_over_the_target_share_of_out_of_scope() -> None:
    in_scope = torch.tensor([10.0, 9.0, 8.0, 7.0])
    correct = torch.ones(4, dtype=torch.bool)
    out_of_scope = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 8.5, 9.5, 11.0])

    threshold = choose_threshold(in_scope, correct, out_of_scope, max_accuracy_loss=0.3, target_recall=0.5)

    assert float((out_of_scope < threshold).float().mean()) == 0.5
    assert bool((in_scope >= threshold).all())  # the target was reached without touching in-scope answers


def test_the_in_scope_budget_wins_over_the_recall_target() -> None:
    in_scope = torch.tensor([10.0, 9.0, 8.0, 7.0, 3.0])
    correct = torch.tensor([True, True, True, True, False])
    out_of_scope = torch.tensor([1.0, 2.0, 7.5, 8.5])

    # Handing over 100% of out-of-scope would cost the correct answers at 7, 8 and 9; the budget
    # of one answer in five allows only the 7.
    threshold = choose_threshold(in_scope, correct, out_of_scope, max_accuracy_loss=0.2, target_recall=1.0)

    assert threshold == 8.0
    assert float((out_of_scope < threshold).float().mean()) == 0.75


def test_a_zero_budget_still_hands_over_what_costs_nothing() -> None:
    in_scope = torch.tensor([10.0, 2.0, 9.0])
    correct = torch.tensor([True, False, True])
    out_of_scope = torch.tensor([1.0, 3.0, 5.0])

    threshold = choose_threshold(in_scope, correct, out_of_scope, max_accuracy_loss=0.0, target_recall=1.0)

    assert 5.0 < threshold <= 9.0
    assert bool((out_of_scope < threshold).all())


def test_a_confident_budget_allows_the_losses_a_binomial_bound_allows() -> None:
    # scipy.stats.binom.cdf(5, 1000, 0.01) = 0.0661 and cdf(6, ...) = 0.1289: at 90% confidence a
    # 1-point budget on 1000 answers allows 5 lost, where the point estimate allows 10.
    assert allowed_losses(1000, 0.01, None) == 10
    assert allowed_losses(1000, 0.01, 0.9) == 5
    assert allowed_losses(1000, 0.01, 0.975) == 3, "training's default: P(X <= 3) = 1.0%, P(X <= 4) = 2.9%"
    assert allowed_losses(1000, 0.01, 0.8) == 6
    # binom.cdf(0, 100, 0.01) = 0.366: a hundred answers cannot show a 1-point cost at 90%.
    assert allowed_losses(100, 0.01, 0.9) == -1


def test_with_confidence_the_threshold_loses_only_what_the_bound_allows() -> None:
    # 1000 correct in-scope answers scored 0..999, and out-of-scope queries that all score above
    # them: every in-scope loss the budget allows is spent.
    in_scope = torch.arange(1000, dtype=torch.float32)
    correct = torch.ones(1000, dtype=torch.bool)
    out_of_scope = torch.full((100,), 5000.0)

    spent = choose_threshold(in_scope, correct, out_of_scope, max_accuracy_loss=0.01, target_recall=1.0)
    bounded = choose_threshold(
        in_scope, correct, out_of_scope, max_accuracy_loss=0.01, target_recall=1.0, confidence=0.9
    )

    assert int((in_scope < spent).sum()) == 10
    assert int((in_scope < bounded).sum()) == 5


def test_when_no_loss_is_confident_enough_the_threshold_loses_nothing() -> None:
    in_scope = torch.tensor([4.0, 5.0, 6.0, 1.0])
    correct = torch.tensor([True, True, True, False])
    out_of_scope = torch.tensor([0.5, 9.0])

    threshold = choose_threshold(
        in_scope, correct, out_of_scope, max_accuracy_loss=0.25, target_recall=1.0, confidence=0.9
    )

    assert threshold == 4.0  # the wrong answer at 1 goes to a human; no correct one does


@pytest.mark.parametrize(
    ("in_scope", "out_of_scope", "recall", "message"),
    [
        (torch.tensor([]), torch.tensor([1.0]), 0.9, "no in-scope validation examples"),
        (torch.tensor([1.0]), torch.tensor([]), 0.9, "no out-of-scope validation examples"),
        (torch.tensor([1.0]), torch.tensor([1.0]), 0.0, "target_recall must be in"),
    ],
)
def test_bad_inputs_are_named(in_scope: torch.Tensor, out_of_scope: torch.Tensor, recall: float, message: str) -> None:
    correct = torch.ones(len(in_scope), dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        choose_threshold(in_scope, correct, out_of_scope, max_accuracy_loss=0.01, target_recall=recall)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_a_confidence_outside_the_open_unit_interval_is_named(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence must be in"):
        choose_threshold(
            torch.tensor([1.0]), torch.tensor([True]), torch.tensor([0.0]),
            max_accuracy_loss=0.01, target_recall=1.0, confidence=confidence,
        )  # fmt: skip
