"""The out-of-scope score and the threshold chosen on validation data."""

from __future__ import annotations

import pytest
import torch

from model_service.handover import choose_threshold, score


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
