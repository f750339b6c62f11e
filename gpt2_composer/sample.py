"""Generate text from a checkpoint written by `gpt2_composer.train`.

    python -m gpt2_composer.sample runs/gpt2-124m/checkpoints/latest-rank0.pt \\
        --prompt "The meaning of life is" --max-new-tokens 100 --temperature 0.8 --top-k 200 --seed 1337

The prompt is encoded with tiktoken's `gpt2` encoding (as the training data was), the context is
cropped to the model's block_size, and each new token is drawn from softmax(logits / temperature)
restricted to the top_k most likely ids. A fixed seed gives the same text on the same device;
temperature 0 always picks the most likely id. The model returns logits only for the tokenizer's
50,257 ids, so a padded vocabulary row (50,257 to 50,303 in the 8-GPU recipe) can never be drawn.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import tiktoken
import torch

from gpt2_composer.checkpoint import CheckpointError, load_model
from gpt2_composer.model import GPT

END_OF_TEXT = 50256  # <|endoftext|> in GPT-2's vocabulary; it also separates documents in the training data


@torch.no_grad()
def generate(model: GPT, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, seed: int = 1337, stop_at_end_of_text: bool = True) -> list[int]:
    """Extend `prompt_ids` by up to `max_new_tokens` ids drawn from the model; return only the new ids.

    Args:
        model: a GPT in eval mode.
        prompt_ids: the context to continue; empty means start a new document at <|endoftext|>.
        max_new_tokens: how many ids to generate at most.
        temperature: divides the logits; 0 picks the most likely id (greedy decoding).
        top_k: keep only the k most likely ids before sampling; None keeps all.
        seed: seeds the torch.Generator that draws the ids.
        stop_at_end_of_text: stop after generating <|endoftext|> (it is included in the result).
    """
    if temperature < 0:
        raise ValueError(f'Invalid temperature={temperature}: use 0 (greedy) or a positive number.')
    if top_k is not None and top_k < 1:
        raise ValueError(f'Invalid top_k={top_k}: use a positive number of ids, or None for all.')
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt_ids or [END_OF_TEXT]], dtype=torch.long, device=device)  # (1, T)
    block_size = model.config.block_size
    new_ids: list[int] = []
    for _ in range(max_new_tokens):
        # No KV cache: every step reruns the cropped context, O(T^2) per step, fine for short samples.
        logits = model(ids[:, -block_size:])[:, -1, :]  # (1, vocab_size), padded rows already cut
        next_id = _pick_next(logits, temperature, top_k, generator)
        ids = torch.cat([ids, next_id], dim=1)
        new_ids.append(int(next_id))
        if stop_at_end_of_text and new_ids[-1] == END_OF_TEXT:
            break
    return new_ids


def _pick_next(logits: torch.Tensor, temperature: float, top_k: Optional[int],
               generator: torch.Generator) -> torch.Tensor:
    """Return the next id, shape (1, 1), from last-position logits of shape (1, vocab_size)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_largest, float('-inf'))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def sample_text(checkpoint: str, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                top_k: Optional[int] = 200, seed: int = 1337, device: Optional[str] = None,
                stop_at_end_of_text: bool = True) -> str:
    """Load a checkpoint and return the decoded continuation of `prompt` (without the prompt).

    Args:
        checkpoint: a local checkpoint file or a remote URL.
        prompt: the text to continue; an empty prompt starts a new document.
        max_new_tokens, temperature, top_k, seed, stop_at_end_of_text: as for `generate`.
        device: 'cpu', 'cuda', ...; None picks cuda when available.
    """
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model, _ = load_model(checkpoint, device)
    encoding = tiktoken.get_encoding('gpt2')
    new_ids = generate(model, encoding.encode_ordinary(prompt), max_new_tokens, temperature, top_k, seed,
                       stop_at_end_of_text)
    return encoding.decode(new_ids)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Generate text from a gpt2_composer checkpoint.')
    parser.add_argument('checkpoint', help='a checkpoint .pt file or a URL (s3://, gs://, ...)')
    parser.add_argument('--prompt', default='', help='text to continue (default: start a new document)')
    parser.add_argument('--max-new-tokens', type=int, default=100, help='tokens to generate at most (default 100)')
    parser.add_argument('--temperature', type=float, default=0.8,
                        help='softmax temperature; 0 is greedy decoding (default 0.8)')
    parser.add_argument('--top-k', type=int, default=200,
                        help='sample among the k most likely tokens; 0 for all (default 200)')
    parser.add_argument('--seed', type=int, default=1337, help='random seed; the same seed gives the same text')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--stop-at-eot', action=argparse.BooleanOptionalAction, default=True,
                        help='stop after <|endoftext|> (default: on)')
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        print(f'error: invalid --max-new-tokens {args.max_new_tokens}: use a positive number of tokens.',
              file=sys.stderr)
        return 2
    try:
        text = sample_text(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature,
                           args.top_k or None, args.seed, args.device, args.stop_at_eot)
    except (CheckpointError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(args.prompt + text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
