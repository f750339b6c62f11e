"""Export to transformers.GPT2LMHeadModel: same logits and greedy text, and rejection of non-GPT-2 models."""

import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import torch
from transformers import GPT2LMHeadModel

from convert.composer_to_hf import ExportError, export_checkpoint
from gpt2_composer.checkpoint import load_model
from gpt2_composer.sample import generate
from tiny_run import STEPS, tiny_run

REPO = Path(__file__).resolve().parents[1]
PROMPT = 'The following are the built-in functions of Python:'


@pytest.fixture(scope='module')
def checkpoint_path(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory) / 'checkpoints' / f'ep0-ba{STEPS}-rank0.pt'


@pytest.fixture(scope='module')
def exported(checkpoint_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('hf')
    result = subprocess.run([sys.executable, 'convert/composer_to_hf.py', str(checkpoint_path), str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _altered_checkpoint(source: Path, destination: Path, change) -> str:
    """Copy a checkpoint with `change(state)` applied to its state dict, and return the new path."""
    raw = torch.load(source, map_location='cpu', weights_only=False)
    change(raw['state'])
    torch.save(raw, destination)
    return str(destination)


def test_export_writes_config_and_safetensors(exported):
    assert (exported / 'config.json').is_file()
    assert (exported / 'model.safetensors').stat().st_size > 0
    config = GPT2LMHeadModel.from_pretrained(exported).config
    assert config.n_positions == 64
    assert config.vocab_size == 50257
    assert config.activation_function == 'gelu_new'
    assert config.layer_norm_epsilon == 1e-5


def test_export_logits_match(checkpoint_path, exported):
    ours, _ = load_model(str(checkpoint_path))
    theirs = GPT2LMHeadModel.from_pretrained(exported).eval()
    ids = torch.tensor([tiktoken.get_encoding('gpt2').encode_ordinary(PROMPT)])
    with torch.no_grad():
        our_logits = ours(ids)
        their_logits = theirs(ids).logits
    assert their_logits.shape == our_logits.shape == (1, ids.shape[1], 50257)
    assert (our_logits - their_logits).abs().max().item() < 1e-4


def _greedy_both(ours, theirs, prompt_ids: list[int], steps: int) -> tuple[list[int], list[int]]:
    our_ids = generate(ours, prompt_ids, max_new_tokens=steps, temperature=0, stop_at_end_of_text=False)
    inputs = torch.tensor([prompt_ids])
    output = theirs.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=steps, do_sample=False,
                             pad_token_id=50256)
    return our_ids, output[0, len(prompt_ids):].tolist()


def test_export_greedy_continuation_matches(checkpoint_path, exported):
    ours, _ = load_model(str(checkpoint_path))
    theirs = GPT2LMHeadModel.from_pretrained(exported).eval()
    prompt_ids = tiktoken.get_encoding('gpt2').encode_ordinary(PROMPT)
    our_ids, their_ids = _greedy_both(ours, theirs, prompt_ids, steps=20)
    assert our_ids == their_ids


def test_export_greedy_matches_on_varied_weights(checkpoint_path, tmp_path):
    # After six training steps the model mostly repeats one token. Larger random weights make it
    # continue with many different ids, which tests the mapping harder.
    generator = torch.Generator().manual_seed(0)

    def perturb(state):
        for key, value in state['model'].items():
            if key != 'model.lm_head.weight':  # tied to wte: the same tensor, perturbed once
                value.add_(0.3 * torch.randn(value.shape, generator=generator))

    path = _altered_checkpoint(checkpoint_path, tmp_path / 'varied.pt', perturb)
    theirs = export_checkpoint(path, str(tmp_path / 'hf'))
    ours, _ = load_model(path)
    our_ids, their_ids = _greedy_both(ours, theirs.eval(), [464, 2068, 7586], steps=16)
    assert len(set(our_ids)) > 3
    assert our_ids == their_ids


def test_export_without_bias_adds_zero_biases(checkpoint_path, tmp_path):
    def drop_biases(state):
        state['model'] = {key: value for key, value in state['model'].items() if not key.endswith('.bias')}
        state['callbacks']['RecipeRecord']['config']['model']['bias'] = False

    path = _altered_checkpoint(checkpoint_path, tmp_path / 'nobias.pt', drop_biases)
    theirs = export_checkpoint(path, str(tmp_path / 'hf')).eval()
    ours, _ = load_model(path)
    ids = torch.tensor([[464, 2068, 7586, 21831]])
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize('change, message', [
    (lambda state: state['model'].pop('model.transformer.wpe.weight'), 'missing weights'),
    (lambda state: state['model'].update({'model.transformer.h.0.attn.q_norm.weight': torch.ones(32)}),
     'q_norm'),
    (lambda state: state['callbacks']['RecipeRecord']['config'].update(algorithms={'rotary': {}}), 'rotary'),
    (lambda state: state['callbacks']['RecipeRecord']['config']['model'].update(qk_norm=True), 'qk_norm'),
    (lambda state: state['model'].update({'model.lm_head.weight': state['model']['model.lm_head.weight'] + 1}),
     'ties the two'),
    (lambda state: state['callbacks']['RecipeRecord']['config'].update(algorithms={'logit_softcap': {}}),
     'logit_softcap'),
], ids=['no-wpe', 'q-norm-weight', 'algorithm', 'model-field', 'untied-head', 'same-weights-algorithm'])
def test_export_rejects_non_gpt2(checkpoint_path, tmp_path, change, message):
    path = _altered_checkpoint(checkpoint_path, tmp_path / 'variant.pt', change)
    with pytest.raises(ExportError, match=message):
        export_checkpoint(path, str(tmp_path / 'hf'))
    assert not (tmp_path / 'hf').exists()


def test_export_accepts_training_only_algorithm(checkpoint_path, tmp_path):
    path = _altered_checkpoint(checkpoint_path, tmp_path / 'ema.pt', lambda state: state['callbacks']['RecipeRecord']
                               ['config'].update(algorithms={'ema': {'half_life': '100ba'}}))
    export_checkpoint(path, str(tmp_path / 'hf'))
    assert (tmp_path / 'hf' / 'model.safetensors').is_file()


def test_export_cli_rejection_message(checkpoint_path, tmp_path):
    path = _altered_checkpoint(checkpoint_path, tmp_path / 'rope.pt',
                               lambda state: state['model'].pop('model.transformer.wpe.weight'))
    result = subprocess.run([sys.executable, 'convert/composer_to_hf.py', path, str(tmp_path / 'hf')],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "missing weights ['transformer.wpe.weight']" in result.stderr
