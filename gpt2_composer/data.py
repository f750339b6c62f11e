"""Streaming dataloaders over the MDS shards that `convert/owt_to_mds.py` writes.

Layout of a dataset root (local folder or remote URL):

    ROOT/stats.json   counts, seq_len, dtype, tokenizer (written last, so its presence means complete)
    ROOT/train/       MDS shards, column 'tokens': ndarray uint16 of seq_len + 1 ids per sample
    ROOT/val/         the same for the held-out documents

Each dataloader yields `{'input_ids': LongTensor (B, seq_len + 1)}`. mosaicml-streaming shuffles
with a seed, splits samples across ranks and workers, and keeps its position in a `state_dict` that
Composer saves in checkpoints, so a resumed run continues mid-epoch with the next unseen samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Optional

import numpy as np
import torch
from composer.core import DataSpec
from streaming import StreamingDataset
from streaming.base.storage.download import CloudDownloader
from torch.utils.data import DataLoader

from gpt2_composer.composer_model import tokens_in_batch
from gpt2_composer.config import ConfigError, DataConfig

TOKENS_COLUMN = 'tokens'


def is_remote(path: str) -> bool:
    return '://' in path


def local_folder_for(root: str, data: DataConfig) -> Optional[str]:
    """Return where shards of a remote root are cached: `data.local_cache`, or a temp folder named by the URL."""
    if not is_remote(root):
        return None
    if data.local_cache:
        return data.local_cache
    digest = hashlib.sha1(root.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), 'gpt2-composer-cache', digest)


def read_stats(data: DataConfig) -> dict[str, Any]:
    """Read `ROOT/stats.json`, downloading it first for a remote root.

    Raises:
        ConfigError: when the root has no stats.json, which means it was never converted or the
            conversion did not finish.
    """
    root = data.root
    if is_remote(root):
        local = os.path.join(local_folder_for(root, data), 'stats.json')
        os.makedirs(os.path.dirname(local), exist_ok=True)
        CloudDownloader.direct_download(f'{root.rstrip("/")}/stats.json', local)
        path = local
    else:
        path = os.path.join(root, 'stats.json')
        if not os.path.isdir(root):
            raise ConfigError(f"data.root='{root}' does not exist. Prepare a dataset first, for example: "
                              f'python convert/owt_to_mds.py --input builtin:pydoc-topics --out-root {root}')
    if not os.path.isfile(path):
        raise ConfigError(f"data.root='{root}' has no stats.json, so it is not a finished dataset from "
                          'convert/owt_to_mds.py (an interrupted conversion leaves none). Convert the text with '
                          f'python convert/owt_to_mds.py --input SRC --out-root {root} --overwrite')
    with open(path, encoding='utf-8') as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ConfigError(f'{path} is not valid JSON ({error}); rerun the conversion with --overwrite.') from None


def check_stats_fit_model(stats: dict[str, Any], data: DataConfig, block_size: int, vocab_size: int) -> None:
    """Raise ConfigError if the dataset's sequence length or vocabulary does not fit the model."""
    seq_len = stats.get('seq_len')
    if not isinstance(seq_len, int) or seq_len > block_size:
        raise ConfigError(f"data.root='{data.root}' holds samples of seq_len={seq_len}, longer than "
                          f'model.block_size={block_size}. Convert with --seq-len {block_size} or set '
                          f'model.block_size={seq_len}.')
    if stats.get('vocab_size', 0) > vocab_size:
        raise ConfigError(f"data.root='{data.root}' was tokenized with vocab_size={stats.get('vocab_size')}, "
                          f'more than model.vocab_size={vocab_size}.')


class TokenDataset(StreamingDataset):
    """StreamingDataset whose samples are int64 token tensors of length seq_len + 1."""

    def __getitem__(self, index: int) -> torch.Tensor:
        sample = super().__getitem__(index)
        return torch.from_numpy(sample[TOKENS_COLUMN].astype(np.int64))


def collate_tokens(samples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {'input_ids': torch.stack(samples)}


def build_dataloader(data: DataConfig, split: str, batch_size: int, shuffle: bool,
                     local_suffix: str = '') -> DataSpec:
    """Build the DataSpec for one split of the dataset.

    Args:
        data: the `data` section of the recipe.
        split: 'train' or 'val'.
        batch_size: samples per batch on this rank.
        shuffle: shuffle samples with `data.shuffle_seed` (new order each epoch).
        local_suffix: appended to the cache folder of a remote root, so that a second reader of the
            same split (the train-loss evaluator) does not share the training reader's cache.
    """
    root = data.root.rstrip('/')
    if is_remote(root):
        remote = f'{root}/{split}'
        local = os.path.join(local_folder_for(root, data), split + local_suffix)
    else:
        remote, local = None, os.path.join(root, split)
        if not os.path.isfile(os.path.join(local, 'index.json')):
            raise ConfigError(f"data.root='{data.root}' has no {split}/index.json. Rerun "
                              f'python convert/owt_to_mds.py ... --out-root {data.root} --overwrite')
    dataset = TokenDataset(
        remote=remote,
        local=local,
        shuffle=shuffle,
        shuffle_seed=data.shuffle_seed,
        batch_size=batch_size,
    )
    workers = data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_tokens,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=data.prefetch_factor if workers > 0 else None,
        persistent_workers=workers > 0,
        drop_last=False,
    )
    return DataSpec(loader, get_num_tokens_in_batch=tokens_in_batch)
