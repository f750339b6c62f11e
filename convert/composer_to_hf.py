"""Export a checkpoint written by `gpt2_composer.train` as a Hugging Face `GPT2LMHeadModel` folder.

    pip install -e '.[export]'    # transformers
    python convert/composer_to_hf.py runs/gpt2-124m/checkpoints/latest-rank0.pt hf/gpt2-124m

The folder then loads with `transformers.GPT2LMHeadModel.from_pretrained('hf/gpt2-124m')`:

    OUT_DIR/config.json         GPT2Config: n_positions = block_size, vocab_size = 50257,
                                activation_function = gelu_new, layer_norm_epsilon from the recipe
    OUT_DIR/model.safetensors   fp32 weights; Conv1D weights transposed, padded vocabulary rows cut

With `--tokenizer` it also writes GPT-2's tokenizer (vocab.json, merges.txt, tokenizer.json) from the
files tiktoken keeps in its cache, so `AutoTokenizer.from_pretrained(OUT_DIR)` works. tiktoken
downloads them unless `TIKTOKEN_CACHE_DIR` points at a folder that contains them.

Only the plain GPT-2 architecture can be exported: learned position embeddings, pre-LayerNorm blocks,
tanh-GELU MLP, tied embedding and head. A checkpoint whose recipe lists algorithms that change the model (any but
`checkpoint.TRAINING_ONLY_ALGORITHMS`), sets model fields
beyond GPTConfig's plain ones, or whose weights differ in name, shape or tying from GPT-2's (rotary
embeddings without `transformer.wpe`, QK-norm weights, ...) raises `ExportError` naming the difference.
A model trained with `model.bias: false` is exported with zero biases, which computes the same function.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Optional

import torch

from gpt2_composer.checkpoint import Checkpoint, CheckpointError, build_config, read_checkpoint
from gpt2_composer.hf_weights import ours_to_hf
from gpt2_composer.model import GPT, GPTConfig

# GPTConfig fields of the plain architecture. A field that a later model variant adds is rejected until
# it is listed here, because export cannot tell whether the variant still computes what GPT-2 computes.
PLAIN_MODEL_FIELDS = {'block_size', 'vocab_size', 'padded_vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout',
                      'bias', 'layer_norm_eps'}

# tiktoken's sources for the `gpt2` encoding (tiktoken_ext/openai_public.py): GPT-2's original BPE files.
GPT2_MERGES_URL = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe'
GPT2_MERGES_SHA256 = '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5'
GPT2_VOCAB_URL = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json'
GPT2_VOCAB_SHA256 = '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783'
END_OF_TEXT = 50256


class ExportError(ValueError):
    """A checkpoint that GPT2LMHeadModel cannot represent; the message names what differs."""


def check_plain_gpt2(checkpoint: Checkpoint) -> GPTConfig:
    """Return the checkpoint's GPTConfig if its model is plain GPT-2, else raise ExportError naming the difference.

    Args:
        checkpoint: read with `gpt2_composer.checkpoint.read_checkpoint`.
    """
    if checkpoint.architecture_algorithms:
        raise ExportError(f'{checkpoint.path} was trained with algorithms {checkpoint.architecture_algorithms}, '
                          'which change the architecture; GPT2LMHeadModel can only hold the plain GPT-2 model.')
    extra_fields = {key: value for key, value in checkpoint.model_fields.items() if key not in PLAIN_MODEL_FIELDS}
    if extra_fields:
        raise ExportError(f'{checkpoint.path} sets model fields that plain GPT-2 does not have: {extra_fields}. '
                          'If they leave the architecture unchanged, add them to PLAIN_MODEL_FIELDS in '
                          'convert/composer_to_hf.py.')
    try:
        config = build_config(checkpoint)
    except CheckpointError as error:
        raise ExportError(str(error)) from None

    expected = _expected_shapes(config)
    found = {key: tuple(value.shape) for key, value in checkpoint.state_dict.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ExportError(f'{checkpoint.path} is not plain GPT-2: missing weights {missing[:8]}, extra weights '
                          f'{unexpected[:8]}. GPT2LMHeadModel needs learned position embeddings '
                          '(transformer.wpe) and no other weights (e.g. no q_norm/k_norm or rotary tables).')
    wrong_shapes = {key: (found[key], expected[key]) for key in expected if found[key] != expected[key]}
    if wrong_shapes:
        raise ExportError(f'{checkpoint.path}: weights whose shapes differ from the recorded config '
                          f'(found, expected): {wrong_shapes}.')
    if not torch.equal(checkpoint.state_dict['transformer.wte.weight'], checkpoint.state_dict['lm_head.weight']):
        raise ExportError(f'{checkpoint.path} has an output head that differs from the token embedding; '
                          'GPT2LMHeadModel ties the two, so it cannot hold this model.')
    return config


def _expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Return the weight names and shapes of a plain GPT of this config, built on the meta device (no memory)."""
    with torch.device('meta'):
        model = GPT(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def build_hf_config(config: GPTConfig):
    """Return the `transformers.GPT2Config` that describes a plain GPT of this shape."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=4 * config.n_embd,
        activation_function='gelu_new',  # GELU with the tanh approximation, as model.MLP uses
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        bos_token_id=END_OF_TEXT,
        eos_token_id=END_OF_TEXT,
        tie_word_embeddings=True,
    )


def _hf_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Map our weights to GPT2LMHeadModel's names and layout, adding zero biases for a model without them."""
    state_dict = {key: value.float() for key, value in state_dict.items()}
    if not config.bias:
        # GPT2LMHeadModel always has biases; a zero bias computes what a missing one does.
        with torch.device('meta'):
            shapes = GPT(GPTConfig(**{**vars(config), 'bias': True})).state_dict()
        for key, value in shapes.items():
            if key.endswith('.bias') and key not in state_dict:
                state_dict[key] = torch.zeros(value.shape)
    return ours_to_hf(state_dict, config.vocab_size)


def export_checkpoint(checkpoint_path: str, out_dir: str, tokenizer: bool = False):
    """Write a checkpoint as a GPT2LMHeadModel folder and return the loaded transformers model.

    Args:
        checkpoint_path: a local checkpoint file or a URL that `composer.utils.get_file` supports.
        out_dir: the folder to write; created if missing, files of the same name are overwritten.
        tokenizer: also write GPT-2's tokenizer files from tiktoken's cache.

    Raises:
        CheckpointError: if the checkpoint cannot be read.
        ExportError: if its architecture is not plain GPT-2.
    """
    from transformers import GPT2LMHeadModel

    checkpoint = read_checkpoint(checkpoint_path)
    config = check_plain_gpt2(checkpoint)
    hf_model = GPT2LMHeadModel(build_hf_config(config))
    # strict=True: every GPT2LMHeadModel weight must come from the checkpoint, nothing may be left over.
    hf_model.load_state_dict(_hf_state_dict(checkpoint.state_dict, config), strict=True)
    hf_model.eval()
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer:
        write_tokenizer(out_dir)
    return hf_model


def write_tokenizer(out_dir: str) -> None:
    """Write GPT-2's tokenizer files into `out_dir`, from the BPE files tiktoken's `gpt2` encoding is built from.

    tiktoken reads them from `TIKTOKEN_CACHE_DIR` when they are there and downloads them otherwise.
    """
    from tiktoken.load import read_file_cached
    from transformers import GPT2TokenizerFast

    with tempfile.TemporaryDirectory(prefix='gpt2-tokenizer-') as workdir:
        vocab_file = os.path.join(workdir, 'vocab.json')
        merges_file = os.path.join(workdir, 'merges.txt')
        with open(vocab_file, 'wb') as file:
            file.write(read_file_cached(GPT2_VOCAB_URL, GPT2_VOCAB_SHA256))
        with open(merges_file, 'wb') as file:
            file.write(read_file_cached(GPT2_MERGES_URL, GPT2_MERGES_SHA256))
        hf_tokenizer = GPT2TokenizerFast(vocab_file=vocab_file, merges_file=merges_file)
        hf_tokenizer.save_pretrained(out_dir)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a gpt2_composer checkpoint as a Hugging Face GPT-2 folder.')
    parser.add_argument('checkpoint', help='a checkpoint .pt file or a URL (s3://, gs://, ...)')
    parser.add_argument('out_dir', help='folder to write config.json and model.safetensors into')
    parser.add_argument('--tokenizer', action='store_true',
                        help="also write GPT-2's tokenizer files, read from tiktoken's cache (downloaded if absent)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        export_checkpoint(args.checkpoint, args.out_dir, tokenizer=args.tokenizer)
    except (CheckpointError, ExportError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'Wrote {args.out_dir}; load it with transformers.GPT2LMHeadModel.from_pretrained({args.out_dir!r})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
