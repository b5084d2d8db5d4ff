"""``ctc.encoder_dropout``: dropout on the Zipformer's residual branches while fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch
from test_finetune_decode import pretrained, run

from speechbudget.errors import SpeechBudgetError
from speechbudget.models.presets import build_encoder, with_overrides
from speechbudget.train import checkpoint as ckpt


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    plain = build_encoder("zipformer-tiny")
    dropped = build_encoder(with_overrides("zipformer-tiny", dropout=0.2))
    dropped.load_state_dict(plain.state_dict())  # no parameters of its own: the same weights load
    x, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x, lengths)[0], dropped(x, lengths)[0])
    dropped.train()
    plain.train()
    a, b = dropped(x, lengths)[0], dropped(x, lengths)[0]
    assert not torch.allclose(a, b)  # a new mask each pass
    assert not torch.allclose(a, plain(x, lengths)[0])
    with pytest.raises(SpeechBudgetError, match="dropout must be in"):
        build_encoder(with_overrides("zipformer-tiny", dropout=1.0))


def test_finetuning_a_pretrained_encoder_with_dropout(tmp_path, synthetic_corpus, capsys):
    r, pre = pretrained(tmp_path, synthetic_corpus, capsys)
    out = json.loads(
        run(capsys, "finetune", r, f"ctc.init_checkpoint={pre}", "ctc.encoder_dropout=0.1", "--json").out
    )
    assert out["steps"] == 3
    # the run's checkpoints keep the spec with its dropout; the pretrained weights were the start
    spec, weights, _ = ckpt.encoder_state(tmp_path / "ft")
    assert spec == {"preset": "zipformer-tiny", "dropout": 0.1}
    card = json.loads((tmp_path / "ft" / "run_card.json").read_text())
    assert card["init"] == {"checkpoint": str(pre), "encoder": "zipformer-tiny"}
    assert {b.dropout for s in build_encoder(spec).stacks for b in s.blocks} == {0.1}
    test_cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    assert json.loads(run(capsys, "decode", tmp_path / "ft", test_cuts, "--json").out)["ref_words"] > 0

    # resuming the run with another dropout is another run: one line naming both
    err = run(
        capsys,
        "finetune",
        r,
        f"ctc.init_checkpoint={pre}",
        "ctc.encoder_dropout=0.2",
        "budget.steps=5",
        code=2,
    ).err
    assert (
        "was trained with ctc.encoder_dropout 0.1 (this run asks for 0.2)" in err and "Traceback" not in err
    )
    err = run(capsys, "finetune", r, "ctc.encoder_dropout=1.5", code=2).err
    assert "ctc.encoder_dropout" in err and "Traceback" not in err
