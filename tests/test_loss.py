"""cross_entropy: the value and gradient of F.cross_entropy, computed in row chunks on CPUs."""

import pytest
import torch
import torch.nn.functional as F

from gpt2_composer import loss as loss_module
from gpt2_composer.loss import cross_entropy


@pytest.mark.parametrize('rows', [1, 15, 16, 17, 40])  # below, at and across the 16-row chunk size
def test_matches_torch_cross_entropy(rows):
    generator = torch.Generator().manual_seed(rows)
    logits = (4 * torch.randn(rows, 301, generator=generator)).requires_grad_()
    targets = torch.randint(0, 301, (rows,), generator=generator)
    expected = F.cross_entropy(logits, targets)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    got = cross_entropy(logits, targets)
    (got_grad,) = torch.autograd.grad(got, logits)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-8)


def test_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(19, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 7, (19,), generator=generator)
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets), (logits,))


def test_uniform_logits_give_log_vocab():
    logits = torch.zeros(32, 4, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3] * 8)
    loss = cross_entropy(logits, targets)
    (3 * loss).backward()  # the upstream gradient scales every entry
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
    expected = torch.full((32, 4), 0.25)
    expected[torch.arange(32), targets] = -0.75
    torch.testing.assert_close(logits.grad, 3 * expected / 32)


def test_non_contiguous_targets():
    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    logits = torch.randn(3 * 8, 50, generator=torch.Generator().manual_seed(2))
    targets = tokens[:, 1:].reshape(-1)
    assert cross_entropy(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_out_of_range_target_raises():
    with pytest.raises(RuntimeError, match='out of bounds'):
        cross_entropy(torch.zeros(2, 5), torch.tensor([0, 5]))


def test_one_chunk_buffer_in_backward(monkeypatch):
    """The backward pass allocates exactly one tensor the size of the logits."""
    allocations = []
    real_empty_like = torch.empty_like
    monkeypatch.setattr(loss_module.torch, 'empty_like',
                        lambda t, *a, **k: allocations.append(t.shape) or real_empty_like(t, *a, **k))
    logits = torch.randn(40, 11, requires_grad=True)
    cross_entropy(logits, torch.zeros(40, dtype=torch.long)).backward()
    assert allocations == [(40, 11)]


def test_saves_one_number_per_row():
    """F.cross_entropy keeps its (N, V) log-softmax for backward; this keeps (N,) log-sum-exps."""
    logits = torch.randn(40, 11, requires_grad=True)
    targets = torch.zeros(40, dtype=torch.long)

    def new_bytes_saved(loss_fn) -> int:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            loss_fn(logits, targets)
        inputs = {logits.untyped_storage().data_ptr(), targets.untyped_storage().data_ptr()}
        return sum(t.nbytes for t in saved if t.untyped_storage().data_ptr() not in inputs)

    assert new_bytes_saved(F.cross_entropy) >= 40 * 11 * 4
    assert new_bytes_saved(cross_entropy) == 40 * 4


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_computed_in_float32(dtype):
    # Shifted logits: exponentials of bf16 differences would round every softmax entry to 1.
    generator = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(20, 1000, generator=generator) + 200).to(dtype).requires_grad_()
    targets = torch.randint(0, 1000, (20,), generator=generator)
    exact_input = logits.detach().double().requires_grad_()
    exact = F.cross_entropy(exact_input, targets)
    (exact_grad,) = torch.autograd.grad(exact, exact_input)
    got = cross_entropy(logits, targets)
    (got_grad,) = torch.autograd.grad(got, logits)
    assert got.dtype == dtype
    assert got_grad.dtype == dtype
    assert got.item() == pytest.approx(exact.item(), abs=0.05)
    assert (got_grad.double() - exact_grad).abs().max().item() < 1e-4
    assert got_grad.double().sum(dim=1).abs().max().item() < 1e-3  # softmax - one_hot sums to 0 per row


@pytest.mark.parametrize('shape, targets, message', [
    ((2, 3, 5), torch.zeros(2, 3, dtype=torch.long), r'shape \(N, V\).*got \(2, 3, 5\) and \(2, 3\)'),
    ((4, 5), torch.zeros(3, dtype=torch.long), r'got \(4, 5\) and \(3,\)'),
    ((4, 5), torch.zeros(4), 'class indices as targets, got dtype torch.float32'),
])
def test_bad_shapes_and_dtypes_rejected(shape, targets, message):
    with pytest.raises(ValueError, match=message):
        cross_entropy(torch.randn(*shape), targets)


def test_int32_targets_accepted():
    logits = torch.randn(6, 9, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([0, 8, 3, 3, 1, 5], dtype=torch.int32)
    assert cross_entropy(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets.long()).item(),
                                                                  rel=1e-6)
