"""Train GPT-2 with Composer from a YAML recipe.

    composer -m gpt2_composer.train yamls/gpt2-124m.yaml [key=value ...]    # all GPUs of the node
    python -m gpt2_composer.train yamls/gpt2-cpu.yaml data.root=data/pydoc   # one process

`composer` (Composer's launcher) starts one process per device and sets the rank variables;
everything else is the same code path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Optional

import torch
from composer import Evaluator, Trainer
from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor, SystemMetricsMonitor
from composer.utils import dist, reproducibility

from gpt2_composer.algorithms import build_algorithms as build_speedup_algorithms
from gpt2_composer.clipping import ClipGradNormAndLog
from gpt2_composer.callbacks import ConsoleLog, MetricsFile, RecipeRecord, ReleaseOutputs, build_wandb_logger
from gpt2_composer.composer_model import ComposerGPT
from gpt2_composer.config import ConfigError, TrainConfig, load_config
from gpt2_composer.data import (build_dataloader, check_shards_match_stats, check_stats_fit_model, is_remote,
                                local_folders, read_stats)
from gpt2_composer.distributed import check_embedding_tied, check_fsdp_runs_here, correct_gloo_gradient_average
from gpt2_composer.flops import measure_matmul_peak
from gpt2_composer.malloc import keep_freed_memory
from gpt2_composer.optim import ResumedSchedule, WarmupCosineSchedule, build_optimizer, build_scheduler
from gpt2_composer.stale_state import claim_local_dirs

log = logging.getLogger('gpt2_composer')


def resolve_device(config: TrainConfig) -> str:
    device = config.device or ('gpu' if torch.cuda.is_available() else 'cpu')
    if device not in ('gpu', 'cpu'):
        raise ConfigError(f"Invalid device='{device}': use gpu, cpu or null (gpu when CUDA is available).")
    if device == 'cpu' and config.precision != 'fp32':
        raise ConfigError(f"precision='{config.precision}' needs a GPU, and this run is on the CPU. "
                          'Override it with precision=fp32.')
    return device


def resolve_flops_available(config: TrainConfig, device: str) -> Optional[float]:
    """Return the peak FLOP/s per device for MFU; 'auto' measures the CPU, None defers to Composer's GPU table."""
    peak = config.gpu_flops_available
    if peak == 'auto':
        if device == 'gpu':
            return None
        peak = measure_matmul_peak(torch.float32)
        log.info('Measured CPU fp32 matmul peak: %.1f GFLOP/s (the MFU denominator)', peak / 1e9)
    return float(peak) if peak is not None else None


def device_batch_sizes(config: TrainConfig) -> tuple[int, int | str]:
    """Return (samples per rank per step, micro-batch size), checking that they divide evenly."""
    world_size = dist.get_world_size()
    global_batch = config.global_train_batch_size
    if global_batch % world_size != 0:
        raise ConfigError(f'global_train_batch_size={global_batch} does not divide across {world_size} '
                          f'processes; use a multiple of {world_size}.')
    device_batch = global_batch // world_size
    micro = config.device_train_microbatch_size
    if micro != 'auto' and device_batch % micro != 0:
        raise ConfigError(f'device_train_microbatch_size={micro} does not divide the {device_batch} samples per '
                          f'device (global_train_batch_size={global_batch} over {world_size} processes); '
                          'choose a divisor of it so every micro-batch has the same size.')
    return device_batch, micro


def eval_batches_available(requested: int, dataloader, split: str) -> int:
    """Return `requested`, or the dataloader's batch count if it has fewer, saying so once.

    Composer warns on every eval when the subset is larger than the dataloader.
    """
    try:
        available = len(dataloader)
    except TypeError:  # no length known
        return requested
    if 0 < available < requested:
        log.info(f'eval_batches={requested}, but the {split} split has {available} batches per rank; each eval reads '
                 f'all {available}.')
        return available
    return requested


def build_evaluators(config: TrainConfig) -> list[Evaluator]:
    val_data = build_dataloader(config.data, 'val', config.device_eval_batch_size, shuffle=False,
                                vocab_size=config.model.vocab_size)
    val = Evaluator(
        label='val',
        dataloader=val_data,
        metric_names=['LanguageCrossEntropy', 'LanguagePerplexity'],
        subset_num_batches=eval_batches_available(config.eval_batches, val_data.dataloader, 'val'),
    )
    evaluators = [val]
    if config.eval_train_split:
        # nanoGPT's eval line also estimates the train loss on eval_batches fresh train batches.
        train = Evaluator(
            # Not 'train': Composer reserves that label for its own training metrics and would then
            # compute this metric on every training batch.
            label='train_eval',
            dataloader=build_dataloader(config.data, 'train', config.device_eval_batch_size, shuffle=True,
                                        vocab_size=config.model.vocab_size,
                                        local_suffix='-eval'),
            metric_names=['LanguageCrossEntropy'],
            subset_num_batches=config.eval_batches,
        )
        evaluators.insert(0, train)
    return evaluators


def build_callbacks(config: TrainConfig, device: str, flops_available: Optional[float],
                    schedule: WarmupCosineSchedule, group_peak_lrs: list[float]) -> list:
    callbacks = [
        SpeedMonitor(window_size=config.speed_window, gpu_flops_available=flops_available),
        LRMonitor(),
        SystemMetricsMonitor(),
        ConsoleLog(log_interval=config.log_interval, flops_available=flops_available),
        RecipeRecord(dataclasses.asdict(config)),
        ResumedSchedule(schedule, group_peak_lrs, source=config.resume_schedule),
        ReleaseOutputs(),
    ]
    if device == 'gpu':
        callbacks.append(MemoryMonitor())
    return callbacks


def build_loggers(config: TrainConfig) -> list:
    loggers = []
    if config.metrics_file:
        loggers.append(MetricsFile(config.metrics_file, resuming=config.autoresume or config.load_path is not None))
    if config.wandb.enabled:
        wandb_logger = build_wandb_logger(config.wandb.project, config.wandb.entity, config.wandb.mode,
                                          config.run_name, config.wandb.dir)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


def build_algorithms(config: TrainConfig) -> list:
    algorithms = build_speedup_algorithms(config.algorithms, grad_clip_norm=config.grad_clip_norm)
    if config.grad_clip_norm is not None:
        algorithms.append(ClipGradNormAndLog(config.grad_clip_norm, log_interval=config.log_interval))
    return algorithms


def prepare_data(config: TrainConfig) -> None:
    """Check the dataset against the model and its own stats.json, and clear streaming state killed runs left."""
    stats = read_stats(config.data)
    check_stats_fit_model(stats, config.data, config.model.block_size, config.model.padded_vocab_size)
    if not is_remote(config.data.root):
        check_shards_match_stats(stats, config.data.root.rstrip('/'))
    if dist.get_local_rank() == 0:
        claim_local_dirs(local_folders(config.data, config.eval_train_split))
    dist.barrier()  # other local ranks build datasets only after the cleanup


def check_load_path(config: TrainConfig) -> None:
    path = config.load_path
    if path is None or is_remote(path) or os.path.exists(path):
        return
    folder = os.path.dirname(path) or '.'
    found = sorted(os.listdir(folder))[:10] if os.path.isdir(folder) else []
    hint = f' {folder} contains: {", ".join(found)}.' if found else ''
    raise ConfigError(f"load_path='{path}' does not exist.{hint} Point load_path at a checkpoint file "
                      '(e.g. runs/RUN/checkpoints/ep0-ba100-rank0.pt) or set load_path=null.')


def explain_load_error(config: TrainConfig, error: RuntimeError) -> Optional[ConfigError]:
    """Turn a state-dict shape mismatch from Composer's checkpoint load into an error that names the fix."""
    message = str(error)
    if 'size mismatch' not in message:
        return None
    source = config.load_path or f'the latest checkpoint in save_folder={config.save_folder}'
    details = '; '.join(line.strip() for line in message.splitlines() if 'size mismatch' in line)[:800]
    return ConfigError(f'{source} holds a model of another size than this recipe ({details}). Set model.* to '
                       'the shape the checkpoint was trained with, or start a new run (another run_name or '
                       'save_folder, and load_path=null).')


def build_trainer(config: TrainConfig) -> Trainer:
    """Build the Composer Trainer for a validated recipe."""
    device = resolve_device(config)
    check_fsdp_runs_here(config.fsdp, device)
    reproducibility.seed_all(config.seed)  # the model init depends on it
    device_batch, micro = device_batch_sizes(config)
    check_load_path(config)
    if dist.get_world_size() > 1:
        dist.initialize_dist(device)  # early, for the barrier in prepare_data; the Trainer reuses it
    prepare_data(config)
    flops_available = resolve_flops_available(config, device)
    if device == 'cpu' and config.keep_freed_memory:
        keep_freed_memory()

    model = ComposerGPT(config.model)
    optimizer = build_optimizer(model, config.optimizer, device)
    schedule = build_scheduler(config.scheduler, config.optimizer.lr, config.max_duration)
    try:
        trainer = Trainer(
            run_name=config.run_name,
            seed=config.seed,
            model=model,
            train_dataloader=build_dataloader(config.data, 'train', device_batch, shuffle=config.data.shuffle,
                                              vocab_size=config.model.vocab_size),
            eval_dataloader=build_evaluators(config),
            eval_interval=config.eval_interval,
            optimizers=optimizer,
            schedulers=schedule,
            step_schedulers_every_batch=True,
            max_duration=config.max_duration,
            device=device,
            precision=config.precision,
            device_train_microbatch_size=micro,
            parallelism_config={'fsdp': dict(config.fsdp)} if config.fsdp else None,
            compile_config={'backend': config.compile_backend} if config.compile else None,
            algorithms=build_algorithms(config),
            callbacks=build_callbacks(config, device, flops_available, schedule,
                                      [group['lr'] for group in optimizer.param_groups]),
            loggers=build_loggers(config),
            progress_bar=False,
            log_to_console=False,
            save_folder=config.save_folder,
            save_interval=config.save_interval,
            save_num_checkpoints_to_keep=config.save_num_checkpoints_to_keep,
            save_overwrite=not config.autoresume,
            autoresume=config.autoresume,
            load_path=config.load_path,
        )
    except RuntimeError as error:
        explained = explain_load_error(config, error)
        if explained is None:
            raise
        raise explained from error
    correct_gloo_gradient_average(trainer.state.model)
    check_embedding_tied(trainer.state.model)
    return trainer


def loaded_checkpoint(config: TrainConfig) -> str:
    """Return the checkpoint the Trainer loaded: autoresume's latest in save_folder, else load_path."""
    latest = os.path.join(config.save_folder, 'latest-rank0.pt') if config.save_folder else None
    if config.autoresume and latest and os.path.lexists(latest):
        return os.path.realpath(latest)
    return str(config.load_path)


def main(argv: Optional[list[str]] = None) -> int:
    """Parse `RECIPE.yaml [key=value ...]`, build the trainer and train."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    log.setLevel(logging.INFO if dist.get_global_rank() == 0 else logging.WARNING)
    try:
        config = load_config(argv[0], argv[1:])
        trainer = build_trainer(config)
    except ConfigError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    resumed_step = trainer.state.timestamp.batch.value
    if resumed_step:
        log.info(f'Resumed at step {resumed_step} from {loaded_checkpoint(config)}')
    trainer.fit()
    check_embedding_tied(trainer.state.model)  # optimizer steps must update one shared matrix
    trainer.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
