"""GPT-2 shape, parameter names, FLOPs and initial loss."""

import math

import pytest
import tiktoken
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2_composer.composer_model import ComposerGPT
from gpt2_composer.flops import flops_per_token, measure_matmul_peak
from gpt2_composer.hf_weights import hf_to_ours, ours_to_hf
from gpt2_composer.model import GPT, GPTConfig

SMALL = dict(block_size=32, vocab_size=50257, n_layer=2, n_head=4, n_embd=64)


@pytest.fixture(scope='module')
def gpt2_124m() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig())


def test_param_count_124m(gpt2_124m):
    assert gpt2_124m.num_params() == 124_439_808


def test_param_count_padded_vocab():
    model = GPT(GPTConfig(padded_vocab_size=50304))
    assert model.num_params() == 124_475_904


def test_flops_per_token_124m(gpt2_124m):
    assert flops_per_token(gpt2_124m, 1024) == 855_166_464


def test_embedding_tied_to_head(gpt2_124m):
    assert gpt2_124m.transformer.wte.weight is gpt2_124m.lm_head.weight


def test_residual_projection_init_scaled(gpt2_124m):
    expected = 0.02 / math.sqrt(2 * 12)
    std = gpt2_124m.transformer.h[0].attn.c_proj.weight.std().item()
    assert std == pytest.approx(expected, rel=0.02)
    assert gpt2_124m.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.02)


def test_initial_loss_on_real_text(gpt2_124m):
    # 16 blocks of 1024 tokens spread over the built-in sample (Python's own documentation).
    # NOTE: GPT-2's init gives logits of std ~0.55, which adds about var/2 = 0.15 to ln(V) on text
    # without repetition; repeated words in context pull it back down. Seeds 0-2 give 10.80-10.91 here.
    import pydoc_data.topics
    encoding = tiktoken.get_encoding('gpt2')
    ids = []
    for name in sorted(pydoc_data.topics.topics):
        ids += encoding.encode_ordinary(pydoc_data.topics.topics[name]) + [encoding.eot_token]
    rows = len(ids) // 1025
    tokens = torch.tensor(ids[:rows * 1025]).view(rows, 1025)[::rows // 16][:16]
    batch = {'input_ids': tokens}
    wrapper = ComposerGPT(GPTConfig())
    wrapper.model = gpt2_124m.eval()
    with torch.no_grad():
        loss = wrapper.loss(wrapper(batch), batch).item()
    assert abs(loss - math.log(50257)) < 0.1


def _random_hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(1)
    config = GPT2Config(n_layer=SMALL['n_layer'], n_head=SMALL['n_head'], n_embd=SMALL['n_embd'],
                        n_positions=SMALL['block_size'], vocab_size=SMALL['vocab_size'],
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def test_parameter_names_match_gpt2():
    hf_keys = set(_random_hf_model().state_dict())
    our_keys = set(GPT(GPTConfig(**SMALL)).state_dict())
    assert our_keys == hf_keys


def test_logits_match_transformers_both_ways():
    hf = _random_hf_model()
    ours = GPT(GPTConfig(**SMALL)).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict()))
    idx = torch.randint(0, SMALL['vocab_size'], (2, SMALL['block_size']))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(ours(idx), expected, atol=1e-4, rtol=0)

        # Perturb ours, copy back into a fresh transformers model, compare again.
        for param in ours.parameters():
            param.add_(0.01 * torch.randn_like(param))
        back = GPT2LMHeadModel(hf.config).eval()
        back.load_state_dict(ours_to_hf(ours.state_dict(), SMALL['vocab_size']))
        torch.testing.assert_close(back(idx).logits, ours(idx), atol=1e-4, rtol=0)


def test_padded_vocab_gets_no_probability():
    model = GPT(GPTConfig(**{**SMALL, 'padded_vocab_size': 50304})).eval()
    with torch.no_grad():
        model.lm_head.weight[50257:] = 10.0  # padded rows that would win every softmax if they were kept
        logits = model(torch.randint(0, 50257, (1, 8)))
    assert logits.shape[-1] == 50257
    assert torch.softmax(logits, -1).sum(-1).allclose(torch.ones(1, 8))


def test_flops_per_batch_follows_batch_shape():
    wrapper = ComposerGPT(GPTConfig(**SMALL))
    full = {'input_ids': torch.zeros(4, 33, dtype=torch.long)}
    short = {'input_ids': torch.zeros(3, 17, dtype=torch.long)}
    assert wrapper.flops_per_batch(full) == 4 * 32 * flops_per_token(wrapper.model, 32)
    assert wrapper.flops_per_batch(short) == 3 * 16 * flops_per_token(wrapper.model, 16)


def test_loss_targets_are_shifted_inputs():
    wrapper = ComposerGPT(GPTConfig(**SMALL))
    tokens = torch.randint(0, 50257, (2, 33))
    batch = {'input_ids': tokens}
    logits = wrapper(batch)
    assert logits.shape == (2, 32, 50257)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50257), tokens[:, 1:].reshape(-1))
    assert wrapper.loss(logits, batch).item() == pytest.approx(expected.item())


def test_sequence_longer_than_block_rejected():
    model = GPT(GPTConfig(**SMALL))
    with pytest.raises(ValueError, match='block_size=32'):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_matmul_peak_keeps_global_rng():
    # `gpu_flops_available: auto` times matmuls between seeding and the model's init.
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    peak = measure_matmul_peak(size=64, seconds=0.01)
    assert peak > 0
    assert torch.equal(torch.rand(4), expected)
