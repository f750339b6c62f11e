"""Checkpoints of a torch.compile'd model load into an uncompiled one, and back."""

from pathlib import Path

import torch

from gpt2_composer.config import load_config
from gpt2_composer.train import build_trainer
from tests.test_train import pydoc_dataset, tiny_run_overrides  # noqa: F401 (pydoc_dataset is a fixture)

REPO = Path(__file__).resolve().parents[1]


def train_and_save(dataset: Path, out: Path, steps: int, compiled: bool, load_path: Path | None = None):
    """Train to `steps` batches (from `load_path` if given) and return (trainer, weights right after loading)."""
    # The 'eager' backend runs TorchDynamo's capture, which is what wraps the model, without
    # spending minutes generating CPU kernels.
    overrides = tiny_run_overrides(dataset, out, steps=steps) + [
        'wandb.enabled=false', 'scheduler.warmup=1ba', 'save_interval=2ba', 'eval_interval=100ba',
        f'compile={str(compiled).lower()}', 'compile_backend=eager',
    ]
    if load_path is not None:
        overrides.append(f'load_path={load_path}')
    trainer = build_trainer(load_config(str(REPO / 'yamls/gpt2-cpu.yaml'), overrides))
    loaded = {name: value.clone() for name, value in trainer.state.model.state_dict().items()}
    trainer.fit()
    trainer.close()
    return trainer, loaded


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location='cpu', weights_only=False)['state']['model']


def test_compiled_checkpoint_round_trip(pydoc_dataset, tmp_path):
    dataset = pydoc_dataset
    trainer, _ = train_and_save(dataset, tmp_path / 'compiled', steps=2, compiled=True)
    assert hasattr(trainer.state.model.forward, '_torchdynamo_orig_callable')  # Composer wrapped it with Dynamo
    compiled_checkpoint = tmp_path / 'compiled' / 'checkpoints' / 'ep0-ba2-rank0.pt'
    saved = weights(compiled_checkpoint)
    assert not any('_orig_mod' in name for name in saved)
    assert 'model.transformer.h.0.attn.c_attn.weight' in saved

    # Compiled -> uncompiled: the uncompiled run starts from exactly the saved weights.
    _, loaded = train_and_save(dataset, tmp_path / 'plain', steps=4, compiled=False, load_path=compiled_checkpoint)
    assert loaded.keys() == saved.keys()
    for name in saved:
        torch.testing.assert_close(loaded[name], saved[name], rtol=0, atol=0)

    # Uncompiled -> compiled again.
    plain_checkpoint = tmp_path / 'plain' / 'checkpoints' / 'ep0-ba4-rank0.pt'
    saved_plain = weights(plain_checkpoint)
    _, loaded_again = train_and_save(dataset, tmp_path / 'again', steps=6, compiled=True, load_path=plain_checkpoint)
    for name in saved_plain:
        torch.testing.assert_close(loaded_again[name], saved_plain[name], rtol=0, atol=0)
    assert not torch.equal(saved_plain['model.transformer.h.0.attn.c_attn.weight'],
                           saved['model.transformer.h.0.attn.c_attn.weight'])
