"""nanoGPT's learning-rate schedule and weight-decay groups."""

import pytest
import torch

from gpt2_composer.config import ConfigError, OptimizerConfig, SchedulerConfig
from gpt2_composer.model import GPT, GPTConfig
from gpt2_composer.optim import WarmupCosineSchedule, build_optimizer, build_scheduler


@pytest.fixture()
def schedule() -> WarmupCosineSchedule:
    return build_scheduler(SchedulerConfig(warmup='2000ba', min_lr=6e-5), peak_lr=6e-4, max_duration='600000ba')


def test_lr_above_zero_at_first_step(schedule):
    assert schedule.multiplier(0) == pytest.approx(1 / 2001)
    assert schedule.multiplier(0) * 6e-4 > 0


def test_lr_reaches_peak_after_warmup(schedule):
    assert schedule.multiplier(1999) == pytest.approx(2000 / 2001)
    assert schedule.multiplier(2000) == pytest.approx(1.0)


def test_lr_at_minimum_after_decay(schedule):
    assert schedule.multiplier(600_000) * 6e-4 == pytest.approx(6e-5)
    assert schedule.multiplier(700_000) * 6e-4 == pytest.approx(6e-5)


def test_lr_cosine_halfway(schedule):
    halfway = 2000 + (600_000 - 2000) // 2
    assert schedule.multiplier(halfway) == pytest.approx(0.1 + 0.5 * 0.9, abs=1e-6)
    decay = [schedule.multiplier(step) for step in range(2000, 600_001, 10_000)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_mixed_time_units_rejected():
    with pytest.raises(ConfigError, match="scheduler.warmup='10ba'"):
        WarmupCosineSchedule('10ba', '1000tok', 0.1)


def test_warmup_longer_than_run_rejected():
    with pytest.raises(ConfigError, match="is not after scheduler.warmup='100ba'"):
        WarmupCosineSchedule('100ba', '50ba', 0.1)


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32))
    optimizer = build_optimizer(model, OptimizerConfig(), device='cpu')
    decay, no_decay = optimizer.param_groups
    assert decay['weight_decay'] == 0.1
    assert no_decay['weight_decay'] == 0.0
    assert all(p.dim() == 2 for p in decay['params'])
    assert all(p.dim() == 1 for p in no_decay['params'])
    # wte/lm_head (tied, once), wpe, and 4 matrices per block.
    assert len(decay['params']) == 2 + 4 * 2
    assert optimizer.defaults['betas'] == (0.9, 0.95)
    assert optimizer.defaults['fused'] is False  # the fused kernel is the default on GPUs only
    assert sum(p.numel() for g in optimizer.param_groups for p in g['params']) == model.num_params()


def test_fused_adamw_matches_foreach_loop():
    torch.manual_seed(0)
    models = [GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    tokens = torch.randint(0, 50257, (2, 17))
    initial = models[0].transformer.h[0].attn.c_attn.weight.detach().clone()
    for model, fused in zip(models, (True, False)):
        optimizer = build_optimizer(model, OptimizerConfig(lr=1e-2, fused=fused), 'cpu')
        assert optimizer.defaults['fused'] is fused
        for _ in range(3):
            logits = model(tokens[:, :-1])
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, fused_param), foreach_param in zip(models[0].named_parameters(), models[1].parameters()):
        # Most differ by about 1e-7. The attention bias of the keys has gradients of rounding-noise
        # size (softmax ignores it), which Adam scales up to full steps: 5e-5 there, 1% of lr.
        assert (fused_param - foreach_param).abs().max() < 1e-4, name
    assert not torch.equal(models[0].transformer.h[0].attn.c_attn.weight, initial)  # the steps trained
