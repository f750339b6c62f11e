"""Read a Composer checkpoint written by `gpt2_composer.train` and rebuild its `GPT` model.

A checkpoint is a torch pickle, local or at any URL `composer.utils.get_file` can fetch (s3://, gs://,
oci://, https://, ...). The fields used here:

    state['model']                                   {'model.transformer.wte.weight': Tensor, ...}
    state['callbacks']['RecipeRecord']['config']     the resolved recipe; ['model'] contains GPTConfig's fields
    state['timestamp']['Timestamp']['batch']         optimizer steps taken

Sampling (`gpt2_composer.sample`) and export (`convert/composer_to_hf.py`) both load through here.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import torch

from gpt2_composer.model import GPT, GPTConfig

# ComposerGPT keeps the GPT module as `self.model`, so its state dict keys start with this.
MODEL_PREFIX = 'model.'
# torch.compile wraps modules in an OptimizedModule whose state dict keys contain this segment.
COMPILE_SEGMENT = '_orig_mod.'

# Recipe algorithms that change training only, so the saved weights still run in the plain GPT. Every
# other name (rotary, alibi, qk_norm, relu_squared, logit_softcap, or one added later) may change the
# forward pass, and a model trained with it is rejected rather than rebuilt wrongly.
TRAINING_ONLY_ALGORITHMS = frozenset(
    {'gradient_clipping', 'ema', 'low_precision_layernorm', 'seq_length_warmup', 'zero_init_projections'})


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or turned into a model; the message names the file and the fix."""


@dataclass
class Checkpoint:
    """The parts of a training checkpoint that describe the model.

    Attributes:
        path: where the checkpoint was read from, as given.
        state_dict: GPT's weights with the Composer wrapper's prefix removed (`transformer.wte.weight`, ...).
        recipe: the run's resolved recipe, as plain dicts and lists.
        step: optimizer steps taken when the checkpoint was saved, or None if the file does not record them.
    """

    path: str
    state_dict: dict[str, torch.Tensor]
    recipe: dict[str, Any]
    step: Optional[int]

    @property
    def architecture_algorithms(self) -> list[str]:
        """The recipe's algorithms that may change the model, i.e. those not in TRAINING_ONLY_ALGORITHMS."""
        return sorted(set(self.recipe.get('algorithms') or {}) - TRAINING_ONLY_ALGORITHMS)

    @property
    def model_fields(self) -> dict[str, Any]:
        """The recipe's `model` section: GPTConfig's fields, plus any a later model variant added."""
        return dict(self.recipe.get('model') or {})


def _fetch(path: str, workdir: str) -> str:
    """Return a local path for `path`, downloading it into `workdir` first if it is a URL."""
    if '://' not in path:
        if not os.path.isfile(path):
            raise CheckpointError(f'Checkpoint not found: {path}. Pass a file such as '
                                  'runs/RUN/checkpoints/ep0-ba5000-rank0.pt or a remote URL (s3://...).')
        return path
    from composer.utils import get_file  # Composer's import is slow; local files do not need it

    destination = os.path.join(workdir, os.path.basename(path.rstrip('/')) or 'checkpoint.pt')
    get_file(path, destination, progress_bar=False)
    return destination


def _strip_prefixes(model_state: dict[str, Any], path: str) -> dict[str, torch.Tensor]:
    state_dict = {}
    for key, value in model_state.items():
        if not key.startswith(MODEL_PREFIX):
            raise CheckpointError(f"{path}: model weight '{key}' does not start with '{MODEL_PREFIX}', so the file "
                                  'was not written by gpt2_composer.train (ComposerGPT).')
        state_dict[key[len(MODEL_PREFIX):].replace(COMPILE_SEGMENT, '')] = value
    return state_dict


def read_checkpoint(path: str) -> Checkpoint:
    """Read weights, recipe and step from a checkpoint file or URL, without building a model.

    Args:
        path: a local `.pt` file or a URL that `composer.utils.get_file` supports.

    Raises:
        CheckpointError: if the file is missing or lacks the model weights or the recipe.
    """
    with tempfile.TemporaryDirectory(prefix='gpt2-checkpoint-') as workdir:
        local_path = _fetch(path, workdir)
        # weights_only=False: Composer pickles more than tensors (timestamps, RNG state, the recipe).
        # Load only checkpoints you trust, as with any pickle.
        try:
            raw = torch.load(local_path, map_location='cpu', weights_only=False)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise CheckpointError(f'{path} is not a readable torch checkpoint ({type(error).__name__}: {error}). '
                                  'Pass a Composer checkpoint such as runs/RUN/checkpoints/latest-rank0.pt.') from None

    state = raw.get('state') if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get('model'), dict):
        raise CheckpointError(f"{path} has no state['model']; pass a Composer checkpoint such as "
                              'runs/RUN/checkpoints/ep0-ba5000-rank0.pt.')
    if not state['model']:
        raise CheckpointError(f"{path} has an empty state['model']. A sharded FSDP checkpoint keeps the weights in "
                              'other files; train with fsdp.state_dict_type: full to get a single-file checkpoint.')
    recipe = state.get('callbacks', {}).get('RecipeRecord', {}).get('config')
    if not isinstance(recipe, dict) or 'model' not in recipe:
        raise CheckpointError(f"{path} has no recipe at state['callbacks']['RecipeRecord']['config'], so the model "
                              'shape is unknown. Checkpoints written by gpt2_composer.train carry it.')
    timestamp = state.get('timestamp', {}).get('Timestamp', {})
    step = timestamp.get('batch')
    return Checkpoint(path=path, state_dict=_strip_prefixes(state['model'], path), recipe=recipe,
                      step=int(step) if step is not None else None)


def build_config(checkpoint: Checkpoint) -> GPTConfig:
    """Build the GPTConfig recorded in a checkpoint's recipe.

    Raises:
        CheckpointError: if the recipe has model fields this version of GPTConfig does not know.
    """
    fields = checkpoint.model_fields
    known = {field.name for field in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f'{checkpoint.path}: the recipe sets model fields {unknown} that this version of '
                              'GPTConfig does not have. Load it with the code version that trained it.')
    return GPTConfig(**fields)


def load_model(path: str, device: str | torch.device = 'cpu') -> tuple[GPT, GPTConfig]:
    """Rebuild the trained GPT from a checkpoint, in eval mode on `device`, in fp32.

    Args:
        path: a local checkpoint file or a URL that `composer.utils.get_file` supports.
        device: where to put the model.

    Returns:
        The model and its config.

    Raises:
        CheckpointError: if the file cannot be read or its weights do not fit the recorded shape.
    """
    checkpoint = read_checkpoint(path)
    return model_from_checkpoint(checkpoint, device), build_config(checkpoint)


def model_from_checkpoint(checkpoint: Checkpoint, device: str | torch.device = 'cpu') -> GPT:
    """Build a GPT from an already read checkpoint and load its weights strictly (every key must match).

    Algorithms in the recipe that change the architecture (rotary, QK-norm, ReLU-squared, ...) are
    applied to the fresh model first, so the weights load into the same module tree they were saved from.
    """
    from gpt2_composer.algorithms import apply_model_algorithms  # the algorithms import this package's model

    model = GPT(build_config(checkpoint))
    try:
        apply_model_algorithms(model, checkpoint.recipe.get('algorithms'))
    except ValueError as error:
        raise CheckpointError(f'{checkpoint.path}: cannot rebuild the model its recipe describes: {error}') from None
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f'{checkpoint.path}: the weights do not match the GPT built from its recipe: '
                              f'{error}') from None
    return model.to(device=device, dtype=torch.float32).eval()
