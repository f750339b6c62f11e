"""Speedup algorithms, switched on by name under `algorithms:` in a recipe.

    algorithms:
      rotary: {base: 10000}
      qk_norm: {}
      seq_length_warmup: {duration: 0.3, min_seq_len: 64}
      ema: {half_life: 100ba}

| name                      | class                                       | changes                                  |
|---------------------------|---------------------------------------------|------------------------------------------|
| `alibi`                   | `alibi.ALiBi`                               | linear attention biases, no `wpe`        |
| `rotary`                  | `rotary.Rotary`                             | rotated q and k, no `wpe`                |
| `qk_norm`                 | `qk_norm.QKNorm`                            | RMSNorm on q and k, adds `q_norm`/`k_norm` |
| `relu_squared`            | `relu_squared.ReLUSquaredMLP`               | MLP activation relu(x)^2                 |
| `zero_init_projections`   | `zero_init.ZeroInitProjections`             | c_proj weights start at zero             |
| `logit_softcap`           | `softcap.LogitSoftCap`                      | logits cap * tanh(logits / cap)          |
| `seq_length_warmup`       | `seq_length_warmup.SequenceLengthWarmup`    | short crops first, growing to the block  |
| `gradient_clipping`       | `composer.algorithms.GradientClipping`      | clips gradients (see below)              |
| `ema`                     | `composer.algorithms.EMA`                   | evaluates an exponential moving average of the weights |
| `low_precision_layernorm` | `composer.algorithms.LowPrecisionLayerNorm` | LayerNorm in bf16/fp16 under autocast    |

Composer's own three apply to any model. EMA (Composer 0.32) keeps a second copy of the
weights (one model's memory), updates it after every step and swaps it in for evaluation and
checkpoints. LowPrecisionLayerNorm acts only under amp_bf16/amp_fp16: on the CPU recipe (fp32) it
warns NoEffectWarning and changes nothing. `gradient_clipping` is Composer's GradientClipping with
any of its clipping types. The recipe's `grad_clip_norm` is norm clipping that also logs the norm
(`gpt2_composer.clipping`), so a recipe sets at most one of the two.

The Muon optimizer is not an algorithm: it is `optimizer.name: muon` (see `muon.build_muon_optimizer`).

Algorithms that change the model run at Event.INIT, before a checkpoint loads, and update the
optimizer's param groups for parameters they add or delete. `architecture_changes` lists how a model
differs from GPT-2, and checkpoints store the recipe's `algorithms` dict.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Optional

import torch
from composer.algorithms import EMA, GradientClipping, LowPrecisionLayerNorm
from composer.core import Algorithm

from gpt2_composer.algorithms.alibi import ALiBi, apply_alibi
from gpt2_composer.algorithms.muon import MuonWithAdamW, build_muon_optimizer
from gpt2_composer.algorithms.qk_norm import QKNorm, apply_qk_norm
from gpt2_composer.algorithms.relu_squared import ReLUSquared, ReLUSquaredMLP, apply_relu_squared
from gpt2_composer.algorithms.rotary import Rotary, apply_rotary
from gpt2_composer.algorithms.seq_length_warmup import (SequenceLengthWarmup, crop_to_seq_len_limit,
                                                        seq_len_limit_transform)
from gpt2_composer.algorithms.softcap import LogitSoftCap, apply_logit_softcap
from gpt2_composer.algorithms.surgery import unwrap_gpt
from gpt2_composer.algorithms.zero_init import ZeroInitProjections, apply_zero_init_projections
from gpt2_composer.config import ConfigError

# Name -> class, in the order the algorithms run at Event.INIT: model surgery first, so that EMA
# copies the changed model and LowPrecisionLayerNorm replaces every LayerNorm.
ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    'alibi': ALiBi,
    'rotary': Rotary,
    'qk_norm': QKNorm,
    'relu_squared': ReLUSquaredMLP,
    'zero_init_projections': ZeroInitProjections,
    'logit_softcap': LogitSoftCap,
    'seq_length_warmup': SequenceLengthWarmup,
    'gradient_clipping': GradientClipping,
    'ema': EMA,
    'low_precision_layernorm': LowPrecisionLayerNorm,
}

# Hyperparameters a recipe may set; Composer's classes take more arguments than make sense in YAML
# (e.g. LowPrecisionLayerNorm's `apply_at` event).
_COMPOSER_HPARAMS = {
    'gradient_clipping': ('clipping_type', 'clipping_threshold'),
    'ema': ('half_life', 'smoothing', 'ema_start', 'update_interval'),
    'low_precision_layernorm': (),
}

_CONFLICTS = [('alibi', 'rotary')]

# Functional forms of the algorithms that change the architecture, to rebuild a trained model.
_MODEL_CHANGES: dict[str, Callable[..., Any]] = {
    'alibi': apply_alibi,
    'rotary': apply_rotary,
    'qk_norm': apply_qk_norm,
    'relu_squared': apply_relu_squared,
    'logit_softcap': apply_logit_softcap,
}


def hyperparameters_of(name: str) -> tuple[str, ...]:
    """Return the hyperparameter names that `algorithms.<name>` accepts in a recipe."""
    if name in _COMPOSER_HPARAMS:
        return _COMPOSER_HPARAMS[name]
    signature = inspect.signature(ALGORITHMS[name].__init__)
    return tuple(p for p in signature.parameters if p != 'self')


def _check_number(name: str, key: str, value: Any) -> None:
    """Raise ConfigError if `value` is not a number where the hyperparameter's default is one."""
    if name in _COMPOSER_HPARAMS:
        return  # Composer's classes check their own arguments
    default = inspect.signature(ALGORITHMS[name].__init__).parameters[key].default
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and not is_number:
        raise ConfigError(f"Invalid algorithms.{name}.{key}={value!r}: expected a number (default {default}).")


def _closest(word: str, choices: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ''


def check_algorithms_spec(spec: dict[str, Any]) -> None:
    """Raise ConfigError for an unknown name, an unknown hyperparameter or a conflicting pair."""
    for name, hparams in spec.items():
        if name not in ALGORITHMS:
            raise ConfigError(f"Unknown algorithm 'algorithms.{name}'.{_closest(str(name), list(ALGORITHMS), 'algorithms.')} "
                              f"Valid names: {', '.join(ALGORITHMS)}.")
        if hparams is None:
            continue
        if not isinstance(hparams, dict):
            raise ConfigError(f"Invalid value for 'algorithms.{name}': {hparams!r}. Give its hyperparameters as a "
                              f'mapping, or {{}} for the defaults.')
        valid = list(hyperparameters_of(name))
        for key in hparams:
            if key not in valid:
                listed = ', '.join(valid) if valid else 'none'
                raise ConfigError(f"Unknown hyperparameter 'algorithms.{name}.{key}'.{_closest(str(key), valid, f'algorithms.{name}.')} "
                                  f'Valid hyperparameters of {name}: {listed}.')
            _check_number(name, key, hparams[key])
    for first, second in _CONFLICTS:
        if first in spec and second in spec:
            raise ConfigError(f"algorithms.{first} and algorithms.{second} cannot be enabled together: both encode "
                              f'positions inside attention in place of the learned position embeddings. Remove one.')


def build_algorithms(spec: Optional[dict[str, Any]], grad_clip_norm: Optional[float] = None) -> list[Algorithm]:
    """Build the recipe's algorithms in the order they must run.

    Args:
        spec: the recipe's `algorithms` section, name -> hyperparameters (`{}` or null for defaults).
        grad_clip_norm: the recipe's `grad_clip_norm`, only to reject clipping set twice. The caller
            adds that clipping itself.

    Raises:
        ConfigError: for an unknown name or hyperparameter, an invalid value, ALiBi with rotary, or
            `gradient_clipping` together with `grad_clip_norm`.
    """
    spec = dict(spec or {})
    check_algorithms_spec(spec)
    if grad_clip_norm is not None and 'gradient_clipping' in spec:
        raise ConfigError('Gradient clipping is set twice, by grad_clip_norm and by algorithms.gradient_clipping. '
                          'Set grad_clip_norm=null to use the algorithm, or remove the algorithm.')
    algorithms = []
    for name, factory in ALGORITHMS.items():  # dict order is the run order
        if name not in spec:
            continue
        try:
            algorithms.append(factory(**(spec[name] or {})))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"Invalid hyperparameters for 'algorithms.{name}' {spec[name]}: {error}") from None
    return algorithms


def apply_model_algorithms(model: torch.nn.Module, spec: Optional[dict[str, Any]]) -> torch.nn.Module:
    """Apply the architecture changes a recipe's `algorithms` section makes, without an optimizer.

    Use this to rebuild a trained model from a checkpoint's recipe before loading its weights.
    Algorithms that change only training (EMA, warmup, zero init, clipping) are skipped.
    """
    spec = dict(spec or {})
    check_algorithms_spec(spec)
    for name, apply in _MODEL_CHANGES.items():
        if name in spec:
            apply(model, **(spec[name] or {}))
    return model


def architecture_changes(model: torch.nn.Module) -> list[str]:
    """List the ways a GPT differs from GPT-2's architecture, by algorithm name; [] for GPT-2 itself."""
    gpt = unwrap_gpt(model)
    attn = gpt.transformer.h[0].attn if len(gpt.transformer.h) else None
    changes = []
    if attn is not None and attn.alibi is not None:
        changes.append('alibi')
    if attn is not None and attn.rotary is not None:
        changes.append('rotary')
    if 'wpe' not in gpt.transformer and not changes:
        changes.append('no_position_embeddings')
    if attn is not None and attn.q_norm is not None:
        changes.append('qk_norm')
    if any(isinstance(block.mlp.act, ReLUSquared) for block in gpt.transformer.h):
        changes.append('relu_squared')
    if gpt.logit_softcap is not None:
        changes.append('logit_softcap')
    return changes


__all__ = [
    'ALGORITHMS', 'ALiBi', 'EMA', 'GradientClipping', 'LogitSoftCap', 'LowPrecisionLayerNorm', 'MuonWithAdamW',
    'QKNorm', 'ReLUSquaredMLP', 'Rotary', 'SequenceLengthWarmup', 'ZeroInitProjections', 'apply_alibi',
    'apply_logit_softcap', 'apply_model_algorithms', 'apply_qk_norm', 'apply_relu_squared', 'apply_rotary',
    'apply_zero_init_projections', 'architecture_changes', 'build_algorithms', 'build_muon_optimizer',
    'check_algorithms_spec', 'crop_to_seq_len_limit', 'seq_len_limit_transform',
]
