"""Faults a long run meets: bad input, a killed and relaunched run, stale shared memory, a killed conversion.

The bad-input table runs each input through the real entry points (`train.main`, `convert_to_mds`) and
checks the error text and that files written before the error are unchanged.
"""

import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from convert.owt_to_mds import convert_to_mds
from convert.text_sources import ConversionError
from gpt2_composer import train
from gpt2_composer.config import DataConfig, load_config
from gpt2_composer.data import TokenDataset, build_dataloader
from gpt2_composer.stale_state import claim_local_dirs, find_stale_prefixes
from test_train import REPO, run_training, tiny_run_overrides

RECIPE = str(REPO / 'yamls/gpt2-cpu.yaml')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('faults') / 'pydoc64'
    convert_to_mds(['builtin:pydoc-topics'], str(root), seq_len=64, progress=False)
    return root


@pytest.fixture(scope='module')
def checkpoint(dataset, tmp_path_factory) -> Path:
    """A 2-step checkpoint of the tiny model (n_embd=64), trained in this process."""
    out = tmp_path_factory.mktemp('checkpoint-run')
    overrides = tiny_run_overrides(dataset, out, steps=2) + ['save_interval=2ba', 'scheduler.warmup=1ba', 'wandb.enabled=false']
    assert train.main([RECIPE, *overrides]) == 0
    return out / 'checkpoints' / 'ep0-ba2-rank0.pt'


def snapshot(*folders: Path) -> dict[str, str]:
    """Map every file under `folders` to the SHA-1 of its bytes."""
    digests = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob('*')):
            if path.is_file():
                digests[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return digests


def copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / 'copy'
    shutil.copytree(dataset, copy)
    return copy


def train_error(capsys, overrides: list[str]) -> str:
    """Run the trainer's entry point in this process and return its error output, which must exit with 2."""
    code = train.main([RECIPE, *overrides])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    return err


def tiny(dataset: Path, tmp_path: Path, *extra: str) -> list[str]:
    return tiny_run_overrides(dataset, tmp_path / 'run', steps=2) + ['wandb.enabled=false', 'scheduler.warmup=1ba', *extra]


# Bad inputs. Each case returns the error text that the real entry point produced.


def case_key_misspelled(ctx):
    return train_error(ctx['capsys'], tiny(ctx['dataset'], ctx['tmp'], 'optimizer.lrr=1e-3'))


def case_value_wrong_type(ctx):
    return train_error(ctx['capsys'], tiny(ctx['dataset'], ctx['tmp'], 'global_train_batch_size=eight'))


def case_microbatch_not_dividing(ctx):
    return train_error(ctx['capsys'], tiny(ctx['dataset'], ctx['tmp'], 'device_train_microbatch_size=3'))


def case_root_missing(ctx):
    return train_error(ctx['capsys'], tiny(ctx['tmp'] / 'nothing', ctx['tmp']))


def case_root_raw_text(ctx):
    folder = ctx['tmp'] / 'texts'
    folder.mkdir()
    (folder / 'a.txt').write_text('raw text, never converted')
    return train_error(ctx['capsys'], tiny(folder, ctx['tmp']))


def case_root_other_seq_len(ctx):
    return train_error(ctx['capsys'], tiny(ctx['dataset'], ctx['tmp'], 'model.block_size=128'))


def case_index_corrupt(ctx):
    copy = copy_dataset(ctx['dataset'], ctx['tmp'])
    (copy / 'train' / 'index.json').write_text('{"shards": [')
    return train_error(ctx['capsys'], tiny(copy, ctx['tmp']))


def case_shard_truncated(ctx):
    copy = copy_dataset(ctx['dataset'], ctx['tmp'])
    shard = copy / 'train' / 'shard.00000.mds'
    shard.write_bytes(shard.read_bytes()[:1000])
    return train_error(ctx['capsys'], tiny(copy, ctx['tmp']))


def case_shard_missing(ctx):
    copy = copy_dataset(ctx['dataset'], ctx['tmp'])
    (copy / 'val' / 'shard.00000.mds').unlink()
    return train_error(ctx['capsys'], tiny(copy, ctx['tmp']))


def case_stats_count_mismatch(ctx):
    copy = copy_dataset(ctx['dataset'], ctx['tmp'])
    stats = json.loads((copy / 'stats.json').read_text())
    stats['splits']['train']['samples'] += 5
    (copy / 'stats.json').write_text(json.dumps(stats))
    return train_error(ctx['capsys'], tiny(copy, ctx['tmp']))


def case_shard_dtype_mismatch(ctx):
    copy = copy_dataset(ctx['dataset'], ctx['tmp'])
    index_path = copy / 'train' / 'index.json'
    index_path.write_text(index_path.read_text().replace('ndarray:uint16:65', 'ndarray:uint32:65'))
    return train_error(ctx['capsys'], tiny(copy, ctx['tmp']))


def case_stats_not_json(ctx):
    copy = copy_dataset(ctx['dataset'], ctx['tmp'])
    (copy / 'stats.json').write_bytes(b'\xff\xfe not json')
    return train_error(ctx['capsys'], tiny(copy, ctx['tmp']))


def case_fsdp_v1_on_cpu(ctx):
    return train_error(ctx['capsys'], tiny(ctx['dataset'], ctx['tmp'], 'fsdp.state_dict_type=full'))


def case_resume_schedule_unknown(ctx):
    return train_error(ctx['capsys'], tiny(ctx['dataset'], ctx['tmp'], 'resume_schedule=latest'))


def case_checkpoint_missing(ctx):
    missing = ctx['checkpoint'].parent / 'ep0-ba9-rank0.pt'
    return train_error(ctx['capsys'], tiny(ctx['dataset'], ctx['tmp'], f'load_path={missing}'))


def case_checkpoint_other_size(ctx):
    overrides = tiny(ctx['dataset'], ctx['tmp'], f'load_path={ctx["checkpoint"]}', 'model.n_embd=128')
    return train_error(ctx['capsys'], overrides)


def convert_error(ctx, source: Path) -> str:
    """Convert `source` onto the copy of a finished output with overwrite=True; return the error text."""
    with pytest.raises(ConversionError) as error:
        convert_to_mds([str(source)], str(ctx['output']), seq_len=64, overwrite=True, progress=False)
    return str(error.value)


def case_text_not_utf8(ctx):
    # Text files are counted without reading them, so the error comes while tokenizing, after
    # the valid files; the staging folder must not survive it.
    source = ctx['tmp'] / 'texts'
    source.mkdir()
    for name in ('a', 'b', 'c'):
        (source / f'{name}.txt').write_text(f'Document {name} is valid UTF-8.')
    (source / 'latin1.txt').write_bytes('caf\u00e9'.encode('latin-1'))
    return convert_error(ctx, source)


def case_jsonl_not_json(ctx):
    source = ctx['tmp'] / 'docs.jsonl'
    source.write_text('{"text": "fine"}\n{"text": oops}\n')
    return convert_error(ctx, source)


def case_jsonl_without_text(ctx):
    source = ctx['tmp'] / 'docs.jsonl'
    source.write_text('{"text": "fine"}\n{"body": "x"}\n')
    return convert_error(ctx, source)


def case_input_folder_empty(ctx):
    source = ctx['tmp'] / 'empty'
    source.mkdir()
    return convert_error(ctx, source)


def case_output_unwritable(ctx):
    blocker = ctx['tmp'] / 'a_file'
    blocker.write_text('')
    with pytest.raises(ConversionError) as error:
        convert_to_mds(['builtin:pydoc-topics'], str(blocker / 'out'), seq_len=64, progress=False)
    return str(error.value)


def case_output_exists(ctx):
    with pytest.raises(ConversionError) as error:
        convert_to_mds(['builtin:pydoc-topics'], str(ctx['output']), seq_len=32, progress=False)
    return str(error.value)


BAD_INPUTS = [
    (case_key_misspelled, r"Unknown config key 'optimizer\.lrr'\. Did you mean 'optimizer\.lr'\?"),
    (case_value_wrong_type, r"Invalid value for config key 'global_train_batch_size'.*eight.*override it with key=value"),
    (case_microbatch_not_dividing, r'device_train_microbatch_size=3 does not divide the 8 samples per device.*choose a divisor'),
    (case_root_missing, r"data\.root='.*nothing' does not exist\. Prepare a dataset first.*owt_to_mds\.py"),
    (case_root_raw_text, r"data\.root='.*texts' contains text files, not a dataset of MDS shards\. Convert them first"),
    (case_root_other_seq_len, r'contains samples of seq_len=64, but model\.block_size=128\. Convert with --seq-len 128'),
    (case_index_corrupt, r'copy/train/index\.json is not valid JSON .*--overwrite'),
    (case_shard_truncated, r'Shard .*copy/train/shard\.00000\.mds has 1000 bytes but .*index\.json records \d+.*truncated.*--overwrite'),
    (case_shard_missing, r'Shard .*copy/val/shard\.00000\.mds, listed in .*index\.json, is missing.*--overwrite'),
    (case_stats_count_mismatch, r'copy/train/index\.json lists \d+ samples, but stats\.json records \d+ for train.*--overwrite'),
    (case_shard_dtype_mismatch, r"shard 0 stores column 'tokens' as ndarray:uint32:65, but stats\.json records ndarray:uint16:65"),
    (case_stats_not_json, r'copy/stats\.json is not valid JSON.*--overwrite'),
    (case_fsdp_v1_on_cpu, r'FSDP v1 fails \(it calls CUDA\)\. Use FSDP2.*FSDP_VERSION=2 composer -n 2'),
    (case_resume_schedule_unknown, r"Invalid resume_schedule='latest': use checkpoint .* or config"),
    (case_checkpoint_missing, r"load_path='.*ep0-ba9-rank0\.pt' does not exist\. .*contains: .*ep0-ba2-rank0\.pt"),
    (case_checkpoint_other_size, r'ep0-ba2-rank0\.pt holds a model of another size than this recipe .*size mismatch for model\.transformer\.wpe\.weight.*torch\.Size\(\[64, 64\]\).*torch\.Size\(\[64, 128\]\).*Set model\.\*'),
    (case_text_not_utf8, r'latin1\.txt is not valid UTF-8.*byte offset 3.*Re-encode'),
    (case_jsonl_not_json, r'docs\.jsonl, line 2: invalid JSON'),
    (case_jsonl_without_text, r"docs\.jsonl, line 2: no 'text' key; keys found: \['body'\]"),
    (case_input_folder_empty, r'input folder .*empty contains no usable files'),
    (case_output_unwritable, r'cannot write to output folder .*a_file/out.*Choose a writable --out-root'),
    (case_output_exists, r'output folder .*output already contains stats\.json, train, val; pass --overwrite'),
]


def test_bad_input_table_size():
    assert len(BAD_INPUTS) >= 15


@pytest.mark.parametrize(('make_error', 'expected'), BAD_INPUTS, ids=[case.__name__[5:] for case, _ in BAD_INPUTS])
def test_bad_input(make_error, expected, dataset, checkpoint, tmp_path, capsys):
    output = tmp_path / 'output'
    shutil.copytree(dataset, output)  # a finished conversion that a failed one must leave as it was
    before = snapshot(dataset, checkpoint.parent, output)
    ctx = {'dataset': dataset, 'checkpoint': checkpoint, 'output': output, 'tmp': tmp_path, 'capsys': capsys}

    message = make_error(ctx)

    assert re.search(expected, message, flags=re.DOTALL), message[-2000:]
    assert snapshot(dataset, checkpoint.parent, output) == before
    assert not (tmp_path / 'run' / 'checkpoints').exists() or not any((tmp_path / 'run' / 'checkpoints').iterdir())


# Killed and relaunched training


def metrics_by_step(path: Path, key: str) -> dict[int, float]:
    """Return `key` by step from a metrics file; a step logged twice (before a kill and after) keeps the last."""
    values = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if key in record:
            values[record['step']] = record[key]
    return values


def wandb_history_steps(run_folder: str) -> list[int]:
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(glob.glob(os.path.join(run_folder, '*.wandb'))[0])
    steps = []
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof('record_type') == 'history':
            steps.append(record.history.step.num)
    return steps


def resume_overrides(data: Path, out: Path) -> list[str]:
    """16 steps of 8 samples over 74 train samples: epoch 1 ends after step 10; a checkpoint every 4 steps."""
    return tiny_run_overrides(data, out, steps=16) + [
        'data.num_workers=1', 'autoresume=true', 'save_interval=4ba', 'save_num_checkpoints_to_keep=-1',
        'log_interval=1', 'eval_interval=100ba', 'eval_train_split=false', 'run_name=resume',
        'scheduler.warmup=3ba',
    ]


def launch(overrides: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, 'WANDB_SILENT': 'true', 'PYTHONPATH': str(REPO)}
    env.pop('WANDB_API_KEY', None)
    command = [sys.executable, '-m', 'gpt2_composer.train', RECIPE, *overrides]
    # A session of its own, so the kill reaches the whole group as a scheduler's would: data-loader
    # workers, wandb's service and Python's resource tracker, which would otherwise unlink shared memory.
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill_after_step(process: subprocess.Popen, metrics: Path, step: int, sig: int) -> None:
    """Send `sig` to the run's process group once `step` optimizer steps are logged."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and step - 1 in metrics_by_step(metrics, 'loss/train/total'):
            break
        time.sleep(0.02)
    assert process.poll() is None, f'the run ended before step {step}: {process.stderr.read()[-2000:]}'
    os.killpg(process.pid, sig)
    process.wait(timeout=120)
    time.sleep(0.5)  # after SIGINT, workers and the wandb service exit on their own
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left, so no process outlives the test
    except ProcessLookupError:
        pass


def latest_checkpoint_step(folder: Path) -> int:
    name = os.readlink(folder / 'latest-rank0.pt')
    return int(name.split('-ba')[1].split('-')[0])


@pytest.fixture(scope='module')
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('small') / 'pydoc5'
    stats = convert_to_mds(['builtin:pydoc-topics'], str(root), seq_len=64, max_documents=5, val_fraction=0.3,
                           progress=False)
    assert stats['splits']['train']['samples'] == 74
    return root


@pytest.fixture(scope='module')
def killed_and_resumed(small_dataset, tmp_path_factory):
    """An uninterrupted 16-step run, and the same command killed twice (SIGKILL, then SIGINT) and relaunched."""
    reference = tmp_path_factory.mktemp('uninterrupted')
    result = run_training(resume_overrides(small_dataset, reference), cwd=reference)
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path_factory.mktemp('killed')
    overrides = resume_overrides(small_dataset, out)
    metrics = out / 'metrics.jsonl'
    resumed_from, stale_after_kill = [], []
    for kill_step, sig in ((6, signal.SIGKILL), (14, signal.SIGINT)):
        kill_after_step(launch(overrides, out), metrics, kill_step, sig)
        resumed_from.append(latest_checkpoint_step(out / 'checkpoints'))
        stale_after_kill.append(find_stale_prefixes([str(small_dataset / 'train'), str(small_dataset / 'val')]))
    relaunch = launch(overrides, out)
    assert relaunch.wait(timeout=600) == 0, relaunch.stderr.read()[-3000:]
    (out / 'relaunch.log').write_text(relaunch.stderr.read())
    return reference, out, resumed_from, stale_after_kill


def test_resume_from_last_checkpoint(killed_and_resumed):
    _, out, resumed_from, _ = killed_and_resumed
    assert resumed_from == [4, 12]  # mid-epoch 1 (sample 32 of 74) and mid-epoch 2 (sample 16)
    runs = sorted(glob.glob(str(out / 'wandb' / 'wandb' / 'offline-run-*')))
    assert len(runs) == 3


def test_resume_names_loaded_checkpoint(killed_and_resumed):
    _, out, resumed_from, _ = killed_and_resumed
    [checkpoint] = (out / 'checkpoints').glob(f'ep*-ba{resumed_from[-1]}-rank0.pt')
    assert f'Resumed at step {resumed_from[-1]} from {os.path.realpath(checkpoint)}' in (out / 'relaunch.log').read_text()


def test_resume_losses_match_uninterrupted(killed_and_resumed):
    reference, out, _, _ = killed_and_resumed
    expected = metrics_by_step(reference / 'metrics.jsonl', 'loss/train/total')
    resumed = metrics_by_step(out / 'metrics.jsonl', 'loss/train/total')
    assert sorted(resumed) == sorted(expected) == list(range(16))
    differences = {step: abs(resumed[step] - expected[step]) for step in expected}
    assert max(differences.values()) <= 1e-5, differences


def test_resume_lr_matches_uninterrupted(killed_and_resumed):
    reference, out, _, _ = killed_and_resumed
    expected = metrics_by_step(reference / 'metrics.jsonl', 'lr-AdamW/group0')
    resumed = metrics_by_step(out / 'metrics.jsonl', 'lr-AdamW/group0')
    assert resumed == pytest.approx(expected, rel=1e-12)


def test_resume_wandb_offline_continues(killed_and_resumed):
    _, out, resumed_from, _ = killed_and_resumed
    runs = sorted(glob.glob(str(out / 'wandb' / 'wandb' / 'offline-run-*')))
    last_run = wandb_history_steps(runs[-1])
    # wandb's service dies with the killed group, so the killed runs may lose their last records.
    assert min(last_run) == resumed_from[-1]
    assert max(last_run) == 16
    assert sorted(set(last_run)) == list(range(resumed_from[-1], 17))


def test_relaunch_clears_stale_shared_memory(killed_and_resumed, small_dataset):
    _, _, _, stale_after_kill = killed_and_resumed
    assert stale_after_kill[0], 'SIGKILL of the process group should leave streaming shared memory behind'
    assert find_stale_prefixes([str(small_dataset / 'train'), str(small_dataset / 'val')]) == []


def first_free_prefix() -> int:
    """Return the prefix streaming would register next: the first without a `locals` segment or file lock."""
    from streaming.base.shared.prefix import _get_path

    prefix = 0
    while (os.path.exists(f'/dev/shm/{_get_path(prefix, "locals")}')
           or glob.glob(os.path.join(tempfile.gettempdir(), f'{prefix:06}_*filelock'))):
        prefix += 1
    return prefix


def test_stale_shared_memory_blocks_remote_until_claimed(dataset, tmp_path):
    """A killed run registered a remote dataset's local cache: streaming rejects the cache until the cleanup."""
    from streaming.base.shared import SharedMemory
    from streaming.base.shared.prefix import _get_path, _pack_locals

    cache = str(tmp_path / 'cache')
    prefix = first_free_prefix()
    data = _pack_locals([cache], prefix)
    stale = SharedMemory(_get_path(prefix, 'locals'), create=True, size=len(data), auto_cleanup=False)
    stale.buf[:len(data)] = data
    stale.shm.close()  # closed but not unlinked, as after a SIGKILL

    with pytest.raises(ValueError, match='Reused local directory'):
        TokenDataset(remote=str(dataset / 'val'), local=cache, batch_size=4)
    assert find_stale_prefixes([cache]) == [prefix]
    removed = claim_local_dirs([cache])

    assert f'{prefix:06}_locals' in removed
    assert find_stale_prefixes([cache]) == []
    assert len(TokenDataset(remote=str(dataset / 'val'), local=cache, batch_size=4)) == 38


def test_dataset_retries_prefix_claimed_at_same_time(dataset, tmp_path, monkeypatch, caplog):
    """Another run registers the prefix this one just found free: the retry takes the next prefix."""
    import streaming.base.shared.prefix as prefix_module
    from streaming.base.shared import SharedMemory
    from streaming.base.shared.prefix import _get_path, _pack_locals

    find = prefix_module._check_and_find_retrying
    rival = []

    def find_then_lose_race(*args, **kwargs):
        prefix = find(*args, **kwargs)
        if not rival:  # the other run creates its segment between our check and our create
            data = _pack_locals([str(tmp_path / 'other-run')], prefix)
            rival.append(SharedMemory(_get_path(prefix, 'locals'), create=True, size=len(data), auto_cleanup=False))
            rival[0].buf[:len(data)] = data
        return prefix

    monkeypatch.setattr(prefix_module, '_check_and_find_retrying', find_then_lose_race)
    try:
        with caplog.at_level('INFO', logger='gpt2_composer.data'):
            loader = build_dataloader(DataConfig(root=str(dataset), num_workers=0), 'val', 4, shuffle=False)
        assert len(loader.dataloader.dataset) == 38
        assert 'was claimed by another process at the same time' in caplog.text
        assert 'retrying (1 of 4)' in caplog.text
    finally:
        rival[0].shm.close()
        rival[0].shm.unlink()


def test_resume_keeps_checkpoint_schedule(dataset, tmp_path, caplog):
    first = tmp_path / 'first'
    common = ['wandb.enabled=false', 'log_interval=1', 'eval_interval=100ba', 'eval_train_split=false',
              'scheduler.warmup=2ba', 'save_interval=6ba']
    assert train.main([RECIPE, *tiny_run_overrides(dataset, first, steps=6), *common]) == 0
    checkpoint = first / 'checkpoints' / 'ep0-ba6-rank0.pt'

    def resume(name: str, *extra: str) -> tuple[float, float]:
        """Return the lr of the first resumed step (6) and the lr logged for step 7."""
        out = tmp_path / name
        overrides = tiny_run_overrides(dataset, out, steps=8) + [*common, f'load_path={checkpoint}',
                                                                  'optimizer.lr=1e-2', *extra]
        first_lr = train.build_trainer(load_config(RECIPE, overrides)).state.optimizers[0].param_groups[0]['lr']
        assert train.main([RECIPE, *overrides]) == 0
        return first_lr, metrics_by_step(out / 'metrics.jsonl', 'lr-AdamW/group0')[7]

    kept = resume('kept')
    assert "Resuming with the checkpoint's learning-rate schedule" in caplog.text
    assert 'Set resume_schedule=config' in caplog.text
    switched = resume('switched', 'resume_schedule=config')

    # Composer's step b uses the schedule at b - 1 (the scheduler steps before the timestamp advances).
    # The checkpoint's cosine reached min_lr (1e-4) at its max_duration, 6ba.
    assert kept[0] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * (5 - 2) / (6 - 2))) * (3e-3 - 1e-4),
                                    rel=1e-9)
    assert kept[1] == pytest.approx(1e-4, rel=1e-9)
    # The recipe's: peak 1e-2, cosine from 2ba to 8ba down to 1e-4.
    for step, lr in zip((5, 6), switched):
        cosine = 0.5 * (1 + math.cos(math.pi * (step - 2) / (8 - 2)))
        assert lr == pytest.approx(1e-4 + cosine * (1e-2 - 1e-4), rel=1e-9)


# Killed conversion


def test_conversion_killed_then_rerun_identical(dataset, tmp_path):
    """SIGKILL mid-conversion leaves no output that looks complete; a rerun then writes identical bytes."""
    out = tmp_path / 'out'
    command = [sys.executable, 'convert/owt_to_mds.py', '--input', 'builtin:pydoc-topics', '--out-root', str(out),
               '--seq-len', '64']
    # The killed run converts the text 40 times, so it is still writing shards when the kill lands.
    # One copy can finish within the 10 ms between two polls.
    killed = command + ['--input', 'builtin:pydoc-topics'] * 39
    process = subprocess.Popen(killed, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob('.incomplete-*/train')) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, 'the conversion finished before it could be killed'
    assert not (out / 'stats.json').exists()
    assert not (out / 'train').exists()
    assert not (out / 'val').exists()

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['stats.json', 'train', 'val']
    relative = {path.relative_to(out): digest for path, digest in
                ((Path(p), d) for p, d in snapshot(out).items())}
    expected = {Path(p).relative_to(dataset): d for p, d in snapshot(dataset).items()}
    assert relative == expected


def test_corrupt_token_ids_rejected(dataset, tmp_path):
    from gpt2_composer.config import DataConfig
    from gpt2_composer.data import build_dataloader

    copy = copy_dataset(dataset, tmp_path)
    shard = copy / 'train' / 'shard.00000.mds'
    data = bytearray(shard.read_bytes())
    data[-2000:] = b'\xff' * 2000  # same size, so the shard checks pass; ids become 65535
    shard.write_bytes(bytes(data))
    config = DataConfig(root=str(copy), num_workers=0)
    loader = build_dataloader(config, 'train', batch_size=8, shuffle=False, vocab_size=50257).dataloader
    with pytest.raises(ValueError, match=r'token id 65535, outside the vocabulary of 50257: a shard is corrupt'):
        for _ in loader:
            pass
