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


def test_masks_fill_with_the_patch_encoders_feature_mean():
    """On raw log-mel a zero mask is a loud band; masks and mixup work around the dataset mean."""
    from speechbudget.models.presets import build_encoder
    from speechbudget.objectives.classify import ClassifierModel

    enc = build_encoder(
        {"preset": "ast-tiny", "dim": 32, "layers": 1, "heads": 2, "feature_mean": -8.0, "feature_std": 4.0}
    )
    model = ClassifierModel(enc, 3, time_roll=False, freq_masks=1, freq_mask_width=40, time_masks=0)
    x = torch.full((2, 50, 128), -3.0)
    torch.manual_seed(0)
    out, _, _ = model.augment_batch(x, torch.tensor([50, 50]), torch.eye(3)[:2])
    masked = out != -3.0
    assert masked.any() and torch.all(out[masked] == -8.0)
    speech = ClassifierModel(build_encoder("zipformer-nano"), 3, time_roll=False, freq_masks=1, time_masks=0)
    assert float(speech.feature_fill()) == 0.0


@pytest.mark.parametrize(
    "name", ["fsdd-keywords", "speechcommands-aum-base", "fsdd-keywords-fastast", "audioset-fastast"]
)
def test_classification_recipes_parse_and_skip_ssl_stages(name):
    from pathlib import Path

    from speechbudget.pipeline import Pipeline
    from speechbudget.recipes import list_recipes
    from speechbudget.run_recipe import load_run_recipe

    assert name in {r["name"] for r in list_recipes()}
    recipe = load_run_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml", [])
    pipe = Pipeline(recipe)
    assert not pipe.enabled("kmeans") and not pipe.enabled("pretrain") and pipe.classifies
    cfg = load_train_config({"exp_dir": "/tmp/x", "finetune": recipe["finetune"]}, "finetune")
    assert cfg.task == "classify" and cfg.schedule.name == "step"
    from speechbudget.models.presets import build_encoder

    build_encoder(cfg.encoder)  # the encoder's own keys (e.g. tome, dist_token) are right too
