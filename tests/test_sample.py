"""Sampling from a real training checkpoint: determinism, top-k, padded vocabulary rows, the CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import torch

from gpt2_composer.checkpoint import CheckpointError, load_model, read_checkpoint
from gpt2_composer.model import GPT, GPTConfig
from gpt2_composer.sample import END_OF_TEXT, generate, sample_text
from tiny_run import STEPS, tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
    return str(tiny_run(tmp_path_factory) / 'checkpoints' / f'ep0-ba{STEPS}-rank0.pt')


def test_checkpoint_reads_recipe_and_step(checkpoint):
    contents = read_checkpoint(checkpoint)
    assert contents.step == STEPS
    assert contents.model_fields['n_embd'] == 64
    assert 'transformer.wte.weight' in contents.state_dict
    model, config = load_model(checkpoint)
    assert not model.training
    assert config.padded_vocab_size == 50304
    assert model.transformer.wte.weight.shape == (50304, 64)


def test_same_seed_same_text(checkpoint):
    first = sample_text(checkpoint, 'import os', max_new_tokens=12, temperature=1.0, top_k=None, seed=7,
                        stop_at_end_of_text=False)
    second = sample_text(checkpoint, 'import os', max_new_tokens=12, temperature=1.0, top_k=None, seed=7,
                         stop_at_end_of_text=False)
    other = sample_text(checkpoint, 'import os', max_new_tokens=12, temperature=1.0, top_k=None, seed=8,
                        stop_at_end_of_text=False)
    assert first == second
    assert first != other


def test_greedy_is_argmax_of_logits(checkpoint):
    model, _ = load_model(checkpoint)
    prompt = tiktoken.get_encoding('gpt2').encode_ordinary('def main():')
    new_ids = generate(model, prompt, max_new_tokens=5, temperature=0, stop_at_end_of_text=False)
    ids = list(prompt)
    for new_id in new_ids:
        with torch.no_grad():
            assert new_id == int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(new_id)


def _last_hidden(model: GPT, ids: list[int]) -> torch.Tensor:
    """Return the final LayerNorm's output at the last position, the vector the head multiplies."""
    captured = {}
    hook = model.transformer.ln_f.register_forward_hook(lambda module, inputs, output: captured.update(h=output))
    with torch.no_grad():
        model(torch.tensor([ids]))
    hook.remove()
    return captured['h'][0, -1]


def _point_rows_at(model: GPT, rows: slice | int, ids: list[int], scale: float) -> None:
    """Set head rows to `scale` times the hidden state of `ids`, so they get the largest logits after it."""
    hidden = _last_hidden(model, ids)
    with torch.no_grad():
        model.lm_head.weight[rows] = scale * hidden / hidden.norm()


def test_padded_ids_never_sampled(checkpoint):
    model, config = load_model(checkpoint)
    prompt = [END_OF_TEXT]
    _point_rows_at(model, slice(config.vocab_size, None), prompt, scale=50.0)
    full_logits = model.lm_head(_last_hidden(model, prompt))  # all 50,304 rows, before the model cuts them
    assert int(full_logits.argmax()) >= config.vocab_size  # a padded id would win if it were reachable
    new_ids = generate(model, prompt, max_new_tokens=30, temperature=2.0, top_k=None, seed=0,
                       stop_at_end_of_text=False)
    assert len(new_ids) == 30
    assert max(new_ids) < config.vocab_size
    assert generate(model, prompt, 3, temperature=0, stop_at_end_of_text=False)[0] < config.vocab_size


def test_top_k_one_equals_greedy(checkpoint):
    model, _ = load_model(checkpoint)
    greedy = generate(model, [464], max_new_tokens=8, temperature=0, stop_at_end_of_text=False)
    top_one = generate(model, [464], max_new_tokens=8, temperature=1.0, top_k=1, seed=3, stop_at_end_of_text=False)
    assert top_one == greedy


def test_context_cropped_to_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=50257, n_layer=1, n_head=1, n_embd=16)).eval()
    new_ids = generate(model, list(range(20)), max_new_tokens=10, temperature=1.0, seed=1, stop_at_end_of_text=False)
    assert len(new_ids) == 10


def test_stops_at_end_of_text():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=50257, n_layer=1, n_head=1, n_embd=16)).eval()
    _point_rows_at(model, END_OF_TEXT, [1, 2], scale=50.0)
    assert generate(model, [1, 2], max_new_tokens=10, temperature=0) == [END_OF_TEXT]


def test_invalid_temperature_rejected():
    model = GPT(GPTConfig(block_size=8, vocab_size=50257, n_layer=1, n_head=1, n_embd=16)).eval()
    with pytest.raises(ValueError, match='temperature=-1'):
        generate(model, [1], max_new_tokens=1, temperature=-1)


def test_missing_checkpoint_is_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match='Checkpoint not found'):
        load_model(str(tmp_path / 'nothing.pt'))


def test_cli_prints_prompt_and_continuation(checkpoint):
    command = [sys.executable, '-m', 'gpt2_composer.sample', checkpoint, '--prompt', 'The', '--max-new-tokens', '6',
               '--seed', '5', '--no-stop-at-eot', '--device', 'cpu']
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith('The')
    expected = sample_text(checkpoint, 'The', max_new_tokens=6, temperature=0.8, top_k=200, seed=5, device='cpu',
                           stop_at_end_of_text=False)
    assert first.stdout == 'The' + expected + '\n'


def test_model_changing_algorithm_applied(checkpoint, tmp_path):
    from gpt2_composer.algorithms.relu_squared import ReLUSquared

    raw = torch.load(checkpoint, map_location='cpu', weights_only=False)
    raw['state']['callbacks']['RecipeRecord']['config']['algorithms'] = {'relu_squared': {}}
    torch.save(raw, tmp_path / 'relu2.pt')
    model, _ = load_model(str(tmp_path / 'relu2.pt'))
    assert all(isinstance(block.mlp.act, ReLUSquared) for block in model.transformer.h)


def test_weights_not_matching_algorithms_rejected(checkpoint, tmp_path):
    # Rotary drops wpe, so a checkpoint that has wpe cannot be the rotary model its recipe claims.
    raw = torch.load(checkpoint, map_location='cpu', weights_only=False)
    raw['state']['callbacks']['RecipeRecord']['config']['algorithms'] = {'rotary': {}}
    torch.save(raw, tmp_path / 'rotary.pt')
    with pytest.raises(CheckpointError, match='transformer.wpe.weight'):
        load_model(str(tmp_path / 'rotary.pt'))


def test_non_checkpoint_file_rejected(tmp_path):
    not_a_checkpoint = tmp_path / 'stats.json'
    not_a_checkpoint.write_text('{"seq_len": 64}')
    with pytest.raises(CheckpointError, match='stats.json is not a readable torch checkpoint'):
        load_model(str(not_a_checkpoint))


def test_negative_max_new_tokens_rejected(checkpoint, capsys):
    from gpt2_composer.sample import main
    assert main([str(checkpoint), '--max-new-tokens', '-3']) == 2
    assert 'invalid --max-new-tokens -3' in capsys.readouterr().err
