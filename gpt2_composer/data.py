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
import logging
import os
import random
import tempfile
import time
from typing import Any, Optional

import numpy as np
import torch
from composer.core import DataSpec
from streaming import StreamingDataset
from streaming.base.storage.download import CloudDownloader
from torch.utils.data import DataLoader

from gpt2_composer.algorithms.seq_length_warmup import seq_len_limit_transform
from gpt2_composer.composer_model import tokens_in_batch
from gpt2_composer.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

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


TEXT_SUFFIXES = ('.txt', '.jsonl', '.jsonl.gz', '.parquet', '.json', '.tar', '.xz')


def _holds_text(root: str) -> bool:
    return any(name.endswith(TEXT_SUFFIXES) for name in os.listdir(root))


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
    if not is_remote(root) and not os.path.isfile(path) and _holds_text(root):
        raise ConfigError(f"data.root='{root}' contains text files, not a dataset of MDS shards. Convert them first: "
                          f'python convert/owt_to_mds.py --input {root} --out-root OUT, then set data.root=OUT.')
    if not os.path.isfile(path):
        raise ConfigError(f"data.root='{root}' has no stats.json, so it is not a finished dataset from "
                          'convert/owt_to_mds.py (an interrupted conversion leaves none). Convert the text with '
                          f'python convert/owt_to_mds.py --input SRC --out-root {root} --overwrite')
    with open(path, encoding='utf-8') as file:
        try:
            stats = json.load(file)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f'{path} is not valid JSON ({error}). {_rerun_hint(root)}') from None
    if not isinstance(stats, dict) or not isinstance(stats.get('splits'), dict):
        raise ConfigError(f'{path} has no "splits" object, so convert/owt_to_mds.py did not write it. '
                          f'{_rerun_hint(root)}')
    return stats


def check_stats_fit_model(stats: dict[str, Any], data: DataConfig, block_size: int, vocab_size: int) -> None:
    """Raise ConfigError unless the dataset's sequence length equals the model's and its vocabulary fits."""
    seq_len = stats.get('seq_len')
    if not isinstance(seq_len, int) or seq_len != block_size:
        raise ConfigError(f"data.root='{data.root}' contains samples of seq_len={seq_len}, but "
                          f'model.block_size={block_size}. Convert with --seq-len {block_size} into another '
                          f'folder, or set model.block_size={seq_len}.')
    if stats.get('vocab_size', 0) > vocab_size:
        raise ConfigError(f"data.root='{data.root}' was tokenized with vocab_size={stats.get('vocab_size')}, "
                          f'more than model.vocab_size={vocab_size}.')


def _rerun_hint(root: str) -> str:
    return f'Rerun the conversion: python convert/owt_to_mds.py --input SRC --out-root {root} --overwrite'


def read_index(root: str, split: str) -> dict[str, Any]:
    """Read `ROOT/SPLIT/index.json` of a local dataset, raising ConfigError if it is missing or not MDS JSON."""
    path = os.path.join(root, split, 'index.json')
    if not os.path.isfile(path):
        raise ConfigError(f'{path} is missing, so the {split} split of data.root={root} is incomplete. '
                          f'{_rerun_hint(root)}')
    try:
        with open(path, encoding='utf-8') as file:
            index = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f'{path} is not valid JSON ({error}). {_rerun_hint(root)}') from None
    if not isinstance(index, dict) or not isinstance(index.get('shards'), list):
        raise ConfigError(f'{path} has no "shards" list, so it is not an MDS index. {_rerun_hint(root)}')
    return index


def check_shards_match_stats(stats: dict[str, Any], root: str) -> None:
    """Check a local dataset's shards against its stats.json: column, dtype, sample length, counts, file sizes.

    Costs one small JSON read per split and one `stat` per shard, no shard reads. Remote roots are not
    checked here because their shards download lazily; streaming validates what it downloads.

    Raises:
        ConfigError: naming the file, what it contains against what stats.json records, and the fix.
    """
    expected_encoding = f"ndarray:{stats.get('dtype')}:{stats.get('sample_len')}"
    for split in ('train', 'val'):
        index = read_index(root, split)
        samples = 0
        for number, shard in enumerate(index['shards']):
            _check_shard(shard, number, root, split, stats, expected_encoding)
            samples += shard.get('samples', 0)
        expected = stats.get('splits', {}).get(split, {}).get('samples')
        if samples != expected:
            raise ConfigError(f'{root}/{split}/index.json lists {samples} samples, but stats.json records '
                              f'{expected} for {split}, so the folder mixes two conversions. {_rerun_hint(root)}')


def _check_shard(shard: dict[str, Any], number: int, root: str, split: str, stats: dict[str, Any],
                 expected_encoding: str) -> None:
    index_path = f'{root}/{split}/index.json'
    encodings = dict(zip(shard.get('column_names', []), shard.get('column_encodings', [])))
    encoding = encodings.get(stats.get('column', TOKENS_COLUMN))
    if encoding != expected_encoding:
        raise ConfigError(f'{index_path}: shard {number} stores column {stats.get("column")!r} as {encoding}, but '
                          f'stats.json records {expected_encoding} (dtype {stats.get("dtype")}, seq_len '
                          f'{stats.get("seq_len")} + 1). {_rerun_hint(root)}')
    file_info = shard.get('zip_data') or shard.get('raw_data') or {}
    path = os.path.join(root, split, str(file_info.get('basename')))
    if not os.path.isfile(path):
        raise ConfigError(f'Shard {path}, listed in {index_path}, is missing. {_rerun_hint(root)}')
    size = os.path.getsize(path)
    if size != file_info.get('bytes'):
        raise ConfigError(f'Shard {path} has {size} bytes but {index_path} records {file_info.get("bytes")}, '
                          f'so it is truncated or was overwritten. {_rerun_hint(root)}')


class TokenDataset(StreamingDataset):
    """StreamingDataset whose samples are int64 token tensors of length seq_len + 1.

    Set `vocab_size` to reject a sample with an id the model has no embedding for, as a corrupt shard
    produces. Without the check, such an id surfaces as an IndexError (a device-side assert on GPUs).
    """

    vocab_size: Optional[int] = None

    def __getitem__(self, index: int) -> torch.Tensor:
        tokens = super().__getitem__(index)[TOKENS_COLUMN]
        if self.vocab_size is not None and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f'Sample {index} of {self.streams[0].local} has token id {int(tokens.max())}, '
                             f'outside the vocabulary of {self.vocab_size}: a shard is corrupt. Convert the '
                             'data again with --overwrite.')
        return torch.from_numpy(tokens.astype(np.int64))


def open_dataset(attempts: int = 5, **kwargs: Any) -> TokenDataset:
    """Build a TokenDataset, retrying when another run claimed the same shared memory at the same time.

    streaming finds the first free prefix for its shared memory and then creates it, so two runs
    that start at the same instant can pick the same prefix, and the later one gets FileExistsError.
    After a short random wait, a new attempt finds the next free prefix.
    """
    for attempt in range(1, attempts + 1):
        try:
            return TokenDataset(**kwargs)
        except FileExistsError as error:
            if attempt == attempts:
                raise
            log.info(f'Shared memory of {kwargs.get("local")} was claimed by another process at the same time '
                     f'({error}); retrying ({attempt} of {attempts - 1}).')
            time.sleep(random.uniform(0.1, 0.5))
    raise AssertionError('unreachable')


def collate_tokens(samples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {'input_ids': torch.stack(samples)}


def split_paths(data: DataConfig, split: str, local_suffix: str = '') -> tuple[Optional[str], str]:
    """Return (remote URL or None, local folder) of one split, as StreamingDataset takes them."""
    root = data.root.rstrip('/')
    if is_remote(root):
        return f'{root}/{split}', os.path.join(local_folder_for(root, data), split + local_suffix)
    return None, os.path.join(root, split)


def local_folders(data: DataConfig, eval_train_split: bool) -> list[str]:
    """Return the local folders of every StreamingDataset a run builds: train, val and the train-loss eval."""
    folders = [split_paths(data, 'train')[1], split_paths(data, 'val')[1]]
    if eval_train_split:
        folders.append(split_paths(data, 'train', local_suffix='-eval')[1])
    return list(dict.fromkeys(folders))


def build_dataloader(data: DataConfig, split: str, batch_size: int, shuffle: bool,
                     local_suffix: str = '', vocab_size: Optional[int] = None) -> DataSpec:
    """Build the DataSpec for one split of the dataset.

    Args:
        data: the `data` section of the recipe.
        split: 'train' or 'val'.
        batch_size: samples per batch on this rank.
        shuffle: shuffle samples with `data.shuffle_seed` (new order each epoch).
        local_suffix: appended to the cache folder of a remote root, so that a second reader of the
            same split (the train-loss evaluator) does not share the training reader's cache.
        vocab_size: reject samples with a token id at or above it (see `TokenDataset`).
    """
    remote, local = split_paths(data, split, local_suffix)
    if remote is None:
        read_index(data.root.rstrip('/'), split)
    dataset = open_dataset(remote=remote, local=local, shuffle=shuffle, shuffle_seed=data.shuffle_seed,
                           batch_size=batch_size)
    dataset.vocab_size = vocab_size
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
    return DataSpec(loader, get_num_tokens_in_batch=tokens_in_batch, batch_transforms=seq_len_limit_transform(dataset))
