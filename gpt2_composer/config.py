"""The typed schema of a training recipe, filled from YAML plus dotted `key=value` overrides.

`load_config('yamls/gpt2-cpu.yaml', ['data.root=/data/owt', 'optimizer.lr=1e-3'])` merges the
overrides into the YAML before `${...}` interpolations resolve, rejects unknown keys by name with
the closest valid key, and checks every value's type against the dataclasses below.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gpt2_composer.model import GPTConfig


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the key, the value and the fix."""


@dataclass
class DataConfig:
    """Location and reading options of the MDS dataset that `convert/owt_to_mds.py` writes."""

    # Folder holding train/, val/ and stats.json: a local path or a remote URL that mosaicml-streaming
    # reads (s3://, gs://, oci://, azure://, hf://, ...).
    root: str = MISSING
    # Local folder for shards of a remote `root`; null means a folder under the system temp dir.
    local_cache: Optional[str] = None
    shuffle: bool = True
    shuffle_seed: int = 9176
    num_workers: int = 2  # DataLoader worker processes per rank
    prefetch_factor: int = 2  # batches each worker prepares ahead


@dataclass
class OptimizerConfig:
    """AdamW with decoupled weight decay on 2-D weights only (matmuls and embeddings)."""

    lr: float = 6.0e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    fused: Optional[bool] = None  # null: fused kernel on CUDA, the foreach loop on CPUs (faster steps there)
    # adamw, or muon: Muon for the 2-D weights inside blocks, AdamW with the settings above for the rest.
    name: str = 'adamw'
    muon_lr: float = 0.02  # peak lr of the Muon groups; the schedule scales it like `lr`
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0


@dataclass
class SchedulerConfig:
    """Linear warmup from lr / (warmup + 1), then cosine decay to `min_lr`, as in nanoGPT."""

    warmup: str = '2000ba'  # Composer time string: batches ('ba') or tokens ('tok')
    min_lr: float = 6.0e-5
    decay_end: Optional[str] = None  # when the cosine reaches min_lr; null means max_duration


@dataclass
class WandbConfig:
    """Weights & Biases logging; with no API key the run logs offline for a later `wandb sync`."""

    enabled: bool = True
    project: str = 'gpt2-composer'
    entity: Optional[str] = None
    mode: str = 'auto'  # auto: online if an API key is configured, else offline. Or online, offline, disabled.
    dir: Optional[str] = None  # where the local run folder goes; null means wandb's default (./wandb)


@dataclass
class TrainConfig:
    """A whole training run."""

    run_name: str = 'gpt2'
    seed: int = 1337
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    max_duration: str = '600000ba'
    # Samples per optimizer step across all ranks; 480 * 1024 = 491,520 tokens, nanoGPT's batch.
    global_train_batch_size: int = 480
    # Samples per forward/backward on one device; Composer derives gradient accumulation from it.
    # 'auto' (FSDP v1 on GPUs only) searches for the largest size that fits in memory.
    device_train_microbatch_size: Any = 12
    device_eval_batch_size: int = 12
    grad_clip_norm: Optional[float] = 1.0  # clip the global gradient L2 norm; null disables clipping
    precision: str = 'amp_bf16'  # fp32, amp_bf16, amp_fp16 (see composer.core.Precision)
    device: Optional[str] = None  # null: gpu when CUDA is available, else cpu
    fsdp: Optional[dict[str, Any]] = None  # passed to Composer as parallelism_config['fsdp']
    compile: bool = False  # torch.compile the model
    compile_backend: str = 'inductor'  # torch.compile backend; 'eager' traces without generating kernels
    # CPU runs: malloc keeps freed memory for reuse, so the large logits tensors do not page-fault
    # every step (see gpt2_composer/malloc.py). The process keeps its peak memory.
    keep_freed_memory: bool = True

    eval_interval: str = '1000ba'
    eval_batches: int = 200  # batches per split and eval, as nanoGPT's eval_iters
    eval_train_split: bool = True  # also measure the loss on train batches, for nanoGPT's eval line
    log_interval: int = 10  # optimizer steps between console lines
    # Peak FLOP/s per device that MFU divides by: a number, 'auto' (measure the CPU's fp32 matmul
    # peak at start-up), or null (Composer's table of GPU peaks by device name and precision).
    gpu_flops_available: Any = None
    speed_window: int = 100  # batches SpeedMonitor averages throughput over
    metrics_file: Optional[str] = 'runs/${run_name}/metrics.jsonl'  # every logged metric as JSON lines

    save_folder: Optional[str] = 'runs/${run_name}/checkpoints'
    save_interval: str = '5000ba'
    save_num_checkpoints_to_keep: int = 3  # older local checkpoints are deleted; -1 keeps all
    autoresume: bool = False
    load_path: Optional[str] = None
    # Learning-rate schedule of a resumed run: 'checkpoint' keeps the one the checkpoint trained with
    # (peak lr, warmup, decay end, min lr) even if the recipe changed; 'config' switches to the recipe's.
    resume_schedule: str = 'checkpoint'

    wandb: WandbConfig = field(default_factory=WandbConfig)
    algorithms: dict[str, Any] = field(default_factory=dict)


# Fields whose values are free-form dicts handed to another library, so their inner keys are not checked here.
_FREEFORM_FIELDS = {'fsdp', 'algorithms'}


def _all_keys(schema: type, prefix: str = '') -> list[str]:
    """List every dotted key of `schema`, nested sections included, e.g. 'optimizer.lr'."""
    keys = []
    for schema_field in dataclasses.fields(schema):
        name = prefix + schema_field.name
        keys.append(name)
        factory = schema_field.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            keys += _all_keys(factory, prefix=f'{name}.')
    return keys


def _check_keys(values: dict, schema: type, prefix: str = '') -> None:
    """Raise ConfigError for the first key in `values` that `schema` does not define, with a suggestion."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        full_key = f'{prefix}{key}'
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            # A key written at the wrong level, such as lr for optimizer.lr, matches a nested key instead.
            nested = [name for name in _all_keys(schema) if '.' in name and name.rsplit('.', 1)[-1] == key]
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ''
            hint = f" Did you mean '{prefix}{nested[0]}'?" if nested and not close else hint
            valid = ', '.join(sorted(fields))
            raise ConfigError(f"Unknown config key '{full_key}'.{hint} Valid keys here: {valid}.")
        field_type = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(field_type) and not isinstance(value, dict) and value is not None:
            inner = ', '.join(f.name for f in dataclasses.fields(field_type))
            raise ConfigError(f"Invalid {full_key}={value!r}: '{full_key}' is a section, so set its keys one by one, "
                              f"e.g. {full_key}.{dataclasses.fields(field_type)[0].name}=... Its keys: {inner}.")
        if key in _FREEFORM_FIELDS or not isinstance(value, dict):
            continue
        if dataclasses.is_dataclass(field_type):
            _check_keys(value, field_type, prefix=f'{full_key}.')


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if '=' not in item or item.startswith('='):
            raise ConfigError(f"Invalid override '{item}': write it as key=value, for example data.root=/data/owt.")
    return OmegaConf.from_dotlist(list(overrides))


def load_config(yaml_path: Optional[str], overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a recipe, apply overrides, resolve interpolations and validate it against `TrainConfig`.

    Args:
        yaml_path: the recipe file, or None to start from the defaults.
        overrides: dotted `key=value` strings; values are parsed as YAML (`3`, `1e-3`, `null`, `[0.9, 0.95]`).

    Raises:
        ConfigError: for a missing file, an unknown key, a value of the wrong type or a missing value.
    """
    base = OmegaConf.create()
    if yaml_path is not None:
        try:
            base = OmegaConf.load(yaml_path)
        except FileNotFoundError:
            raise ConfigError(f'Recipe not found: {yaml_path}. Pass a YAML file such as yamls/gpt2-cpu.yaml.') from None
        except OmegaConfBaseException as error:
            raise ConfigError(f'Invalid YAML in {yaml_path}: {error}') from None
    merged = OmegaConf.merge(base, _parse_overrides(overrides or []))
    _check_keys(OmegaConf.to_container(merged, resolve=False), TrainConfig)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(TrainConfig), merged)
        OmegaConf.resolve(typed)
        config = OmegaConf.to_object(typed)
    except OmegaConfBaseException as error:
        key = getattr(error, 'full_key', None) or '?'
        message = str(getattr(error, 'msg', error)).splitlines()[0]
        raise ConfigError(f"Invalid value for config key '{key}': {message}. "
                          'Fix it in the YAML or override it with key=value.') from None
    except ValueError as error:  # a section's own check, such as GPTConfig's on n_head and n_embd
        raise ConfigError(str(error)) from None
    _check_values(config)
    return config


# Keys whose values are Composer time strings: a number and a unit, e.g. 2000ba, 1ep, 10000tok.
_TIME_KEYS = ('max_duration', 'eval_interval', 'save_interval', 'scheduler.warmup', 'scheduler.decay_end')


def _check_time_strings(config: TrainConfig) -> None:
    from composer.core import Time  # Composer is slow to import; only this check needs it here

    for key in _TIME_KEYS:
        value = OmegaConf.select(OmegaConf.structured(config), key)
        if value is None:
            continue
        try:
            Time.from_timestring(str(value))
        except ValueError:
            raise ConfigError(f"Invalid {key}='{value}': use a number with a unit, such as 2000ba (batches), "
                              '1ep (epochs) or 10000000tok (tokens).') from None


def _check_values(config: TrainConfig) -> None:
    """Check values the type system cannot: unions with 'auto', divisibility, allowed names."""
    _check_time_strings(config)
    micro = config.device_train_microbatch_size
    if micro != 'auto' and (not isinstance(micro, int) or isinstance(micro, bool) or micro < 1):
        raise ConfigError(f"Invalid device_train_microbatch_size={micro!r}: use a positive integer or 'auto'.")
    peak = config.gpu_flops_available
    if peak not in (None, 'auto') and (isinstance(peak, bool) or not isinstance(peak, (int, float)) or peak <= 0):
        raise ConfigError(f"Invalid gpu_flops_available={peak!r}: use FLOP/s per device (e.g. 312e12), 'auto' or null.")
    if config.wandb.mode not in ('auto', 'online', 'offline', 'disabled'):
        raise ConfigError(f"Invalid wandb.mode='{config.wandb.mode}': use auto, online, offline or disabled.")
    if config.resume_schedule not in ('checkpoint', 'config'):
        raise ConfigError(f"Invalid resume_schedule='{config.resume_schedule}': use checkpoint (keep the "
                          "checkpoint's learning-rate schedule) or config (switch to the recipe's).")
    if config.optimizer.name not in ('adamw', 'muon'):
        raise ConfigError(f"Invalid optimizer.name='{config.optimizer.name}': use adamw or muon.")
    if config.optimizer.name == 'muon' and config.fsdp:
        raise ConfigError('optimizer.name=muon needs whole weight matrices on every rank, and FSDP shards them. '
                          'Set fsdp=null to train with DDP, or use optimizer.name=adamw.')
    if config.log_interval < 1:
        raise ConfigError(f'Invalid log_interval={config.log_interval}: use a positive number of steps.')
