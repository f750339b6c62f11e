"""Recipe loading: overrides, interpolation, unknown keys and wrong types."""

from pathlib import Path

import pytest

from gpt2_composer.config import ConfigError, TrainConfig, load_config

YAMLS = Path(__file__).resolve().parents[1] / 'yamls'


def test_cpu_recipe_loads_with_override():
    config = load_config(str(YAMLS / 'gpt2-cpu.yaml'), ['data.root=/tmp/elsewhere', 'optimizer.lr=3e-4'])
    assert isinstance(config, TrainConfig)
    assert config.data.root == '/tmp/elsewhere'
    assert config.optimizer.lr == 3e-4
    assert config.model.n_layer == 4
    assert config.precision == 'fp32'


def test_124m_recipe_matches_nanogpt():
    config = load_config(str(YAMLS / 'gpt2-124m.yaml'), ['data.root=/data/owt'])
    assert config.global_train_batch_size * config.model.block_size == 491_520
    assert config.max_duration == '600000ba'
    assert config.scheduler.warmup == '2000ba'
    assert (config.optimizer.lr, config.scheduler.min_lr) == (6e-4, 6e-5)
    assert config.optimizer.betas == [0.9, 0.95]
    assert config.optimizer.weight_decay == 0.1
    assert config.grad_clip_norm == 1.0
    assert config.precision == 'amp_bf16'
    assert config.fsdp['sharding_strategy'] == 'FULL_SHARD'
    assert config.autoresume is True


def test_124m_recipe_requires_data_root():
    with pytest.raises(ConfigError, match="'data.root'"):
        load_config(str(YAMLS / 'gpt2-124m.yaml'), [])


def test_override_applies_before_interpolation():
    config = load_config(str(YAMLS / 'gpt2-cpu.yaml'), ['run_name=probe'])
    assert config.save_folder == 'runs/probe/checkpoints'
    assert config.metrics_file == 'runs/probe/metrics.jsonl'


@pytest.mark.parametrize('override, named, suggested', [
    ('optimizer.lrr=1e-3', 'optimizer.lrr', 'optimizer.lr'),
    ('max_duraton=10ba', 'max_duraton', 'max_duration'),
    ('model.n_layers=2', 'model.n_layers', 'model.n_layer'),
])
def test_unknown_key_names_closest(override, named, suggested):
    with pytest.raises(ConfigError) as error:
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), [override])
    assert f"Unknown config key '{named}'" in str(error.value)
    assert f"Did you mean '{suggested}'" in str(error.value)


def test_unknown_key_in_yaml_file(tmp_path):
    recipe = tmp_path / 'bad.yaml'
    recipe.write_text('data:\n  root: x\n  shufle: false\n')
    with pytest.raises(ConfigError, match=r"Unknown config key 'data.shufle'.*'data.shuffle'"):
        load_config(str(recipe))


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as error:
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), ['model.n_layer=four'])
    assert "'model.n_layer'" in str(error.value)
    assert 'four' in str(error.value)


@pytest.mark.parametrize('override, message', [
    ('device_train_microbatch_size=0', 'device_train_microbatch_size=0'),
    ('gpu_flops_available=fast', "gpu_flops_available='fast'"),
    ('wandb.mode=sometimes', "wandb.mode='sometimes'"),
])
def test_invalid_values_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), [override])


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match='Recipe not found: nope.yaml'):
        load_config('nope.yaml')


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="Invalid override 'optimizer.lr'"):
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), ['optimizer.lr'])


@pytest.mark.parametrize('override, key', [
    ('max_duration=ten', 'max_duration'),
    ('eval_interval=often', 'eval_interval'),
    ('scheduler.warmup=2000', 'scheduler.warmup'),
])
def test_invalid_time_string_names_key(override, key):
    with pytest.raises(ConfigError, match=f"Invalid {key}='.*': use a number with a unit"):
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), [override])


@pytest.mark.parametrize('override, suggested', [('lr=1e-3', 'optimizer.lr'), ('n_layer=2', 'model.n_layer')])
def test_key_at_wrong_level_suggests_section(override, suggested):
    with pytest.raises(ConfigError, match=f"Did you mean '{suggested}'"):
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), [override])


@pytest.mark.parametrize('override, first_key', [('model=small', 'model.block_size'), ('optimizer=adam', 'optimizer.lr')])
def test_section_set_to_scalar_lists_its_keys(override, first_key):
    section, value = override.split('=')
    with pytest.raises(ConfigError, match=f"Invalid {section}='{value}': '{section}' is a section") as error:
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), [override])
    assert f'e.g. {first_key}=...' in str(error.value)


def test_model_shape_check_is_config_error():
    with pytest.raises(ConfigError, match='model.n_embd=256 is not divisible by model.n_head=5'):
        load_config(str(YAMLS / 'gpt2-cpu.yaml'), ['model.n_head=5'])
