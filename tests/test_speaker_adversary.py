"""The speaker adversary's two losses and its labels (``ctc.speaker_adversary``)."""

from __future__ import annotations

import math

import pytest
import torch

from speechbudget.errors import SpeechBudgetError
from speechbudget.objectives.speaker_adversary import SpeakerAdversary


def test_the_classifier_learns_the_speaker_and_the_encoder_learns_to_leave_it_at_chance():
    torch.manual_seed(0)
    adv = SpeakerAdversary(8, ["george", "nicolas", "spk001"], weight=0.5)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    ce, confusion, _ = adv(hidden, torch.tensor([5, 3]), ["nicolas", "george"])
    frames = hidden.detach()[[0, 0, 0, 0, 0, 1, 1, 1], [0, 1, 2, 3, 4, 0, 1, 2]]  # padding carries no label
    logp = adv.net(frames).log_softmax(-1)
    assert float(ce) == pytest.approx(float(-logp[torch.arange(8), torch.tensor([1] * 5 + [0] * 3)].mean()))
    assert float(confusion) == pytest.approx(float(-logp.mean() - math.log(3)))  # KL(uniform || p) >= 0
    # the cross-entropy trains the classifier only, the confusion the encoder only
    ce.backward(retain_graph=True)
    assert hidden.grad is None and adv.net[0].weight.grad.abs().sum() > 0
    adv.zero_grad()
    confusion.backward()
    assert adv.net[0].weight.grad is None or adv.net[0].weight.grad.abs().sum() == 0
    assert hidden.grad[0].abs().sum() > 0 and hidden.grad[1, 3:].abs().sum() == 0  # nothing from padding


def test_a_posterior_at_chance_costs_the_encoder_nothing():
    adv = SpeakerAdversary(4, ["a", "b"], weight=1.0)
    with torch.no_grad():
        adv.net[2].weight.zero_(), adv.net[2].bias.zero_()  # the classifier says 1/2 whatever it hears
    _, confusion, _ = adv(torch.randn(1, 3, 4), torch.tensor([3]), ["a"])
    assert float(confusion) == pytest.approx(0.0, abs=1e-6)


def test_utterances_of_other_speakers_are_left_out():
    adv = SpeakerAdversary(4, ["a", "b", ""], weight=1.0)
    assert adv.index == {"a": 0, "b": 1}  # an unlabelled cut is no class
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    ce, confusion, accuracy = adv(hidden, torch.tensor([3, 3]), ["dev-speaker", ""])
    assert float(ce) == float(confusion) == 0 and accuracy == 0.0  # nothing to classify, graph kept
    (ce + confusion).backward()
    assert hidden.grad.abs().sum() == 0


def test_one_speaker_is_a_one_line_error():
    with pytest.raises(SpeechBudgetError, match="at least two training speakers"):
        SpeakerAdversary(4, ["a", "a", ""], weight=1.0)
