"""The `classify:` recipe section and the step schedule of AuM/AST (x0.85 per epoch from epoch 5)."""

from __future__ import annotations

import pytest
import torch

from speechbudget.config import load_train_config
from speechbudget.errors import SpeechBudgetError
from speechbudget.train.optim import build_scheduler


def _cfg(**finetune):
    return load_train_config({"exp_dir": "/tmp/x", "finetune": finetune}, "finetune")


def test_classify_section_is_typed_and_checked():
    cfg = _cfg(task="classify", classify={"mixup": {"prob": 0.6}, "time_masks": {"count": 2, "width": 48}})
    assert cfg.task == "classify" and cfg.classify.mixup.prob == 0.6 and cfg.classify.mixup.alpha == 10.0
    assert cfg.classify.time_masks.count == 2 and cfg.classify.freq_masks.width == 48
    assert _cfg().task == "ctc"
    with pytest.raises(SpeechBudgetError, match="'finetune.task' must be ctc or classify"):
        _cfg(task="regress")
    with pytest.raises(SpeechBudgetError, match="classify.mixup.prob' must be between 0 and 1"):
        _cfg(classify={"mixup": {"prob": 1.5}})
    with pytest.raises(SpeechBudgetError, match="unknown config key 'finetune.classify.masks'"):
        _cfg(classify={"masks": 3})
    with pytest.raises(SpeechBudgetError, match="classify.loss' must be ce or bce"):
        _cfg(classify={"loss": "hinge"})


def test_step_schedule_decays_by_epoch_after_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.5e-4)
    s = build_scheduler("step", opt, warmup_steps=4, decay_start_epoch=5, decay=0.85)
    s.step_batch(1)
    assert s.get_last_lr()[0] == pytest.approx(2.5e-4 * 2 / 4)
    s.step_batch(100)
    for epoch, factor in ((0.5, 1.0), (4.99, 1.0), (5.0, 0.85), (6.2, 0.85**2), (10.0, 0.85**6)):
        s.step_epoch(epoch)
        assert s.get_last_lr()[0] == pytest.approx(2.5e-4 * factor), epoch
    state = s.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.5e-4)
    s2 = build_scheduler("step", opt2, warmup_steps=4, decay_start_epoch=5, decay=0.85)
    s2.load_state_dict(state)
    assert s2.get_last_lr() == s.get_last_lr()
    with pytest.raises(SpeechBudgetError, match="decay must be in"):
        build_scheduler("step", opt, decay=1.5)
