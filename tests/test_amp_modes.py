"""Which precision the trainer's forward pass runs in, per ``amp`` value and device."""

import pytest
import torch

from speechbudget.config import TrainConfig, check_ranges
from speechbudget.errors import SpeechBudgetError
from speechbudget.train.trainer import cpu_has_native_bf16, uses_bf16


def test_fixed_modes_ignore_the_device():
    for device in ("cpu", "cuda"):
        assert uses_bf16("bf16", device)
        assert not uses_bf16("off", device)


def test_auto_is_bf16_on_cuda_only():
    assert uses_bf16("auto", "cuda")
    assert not uses_bf16("auto", "cpu")


def test_native_follows_the_cpu():
    assert uses_bf16("native", "cuda")
    assert uses_bf16("native", "cpu") == cpu_has_native_bf16()
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_native_bf16() == expected


def test_unknown_amp_is_a_config_error():
    with pytest.raises(SpeechBudgetError, match="amp"):
        check_ranges(TrainConfig(amp="fp16"), "pretrain")
