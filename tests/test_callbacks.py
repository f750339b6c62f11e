"""ReleaseOutputs: the Trainer keeps no logits between microbatches or after an evaluation."""

import torch
from composer import Trainer
from composer.metrics.nlp import LanguageCrossEntropy
from composer.core import Callback, State
from composer.loggers import Logger
from torch.utils.data import DataLoader

from gpt2_composer.callbacks import ReleaseOutputs
from gpt2_composer.composer_model import ComposerGPT
from gpt2_composer.model import GPTConfig

TINY = dict(block_size=16, vocab_size=97, n_layer=1, n_head=2, n_embd=16, dropout=0.0)


class OutputsAtBatchEnd(Callback):
    """Record whether `state.outputs` is still a tensor at the end of each batch."""

    def __init__(self):
        self.held: list[bool] = []

    def batch_end(self, state: State, logger: Logger) -> None:
        self.held.append(isinstance(state.outputs, torch.Tensor))


class WithTrainMetrics(ComposerGPT):
    def get_metrics(self, is_train: bool = False):
        return {'LanguageCrossEntropy': LanguageCrossEntropy()}


def train_losses(callbacks: list[Callback], steps: int = 3, model_class=ComposerGPT,
                 evaluate: bool = False) -> list[float]:
    torch.manual_seed(0)
    model = model_class(GPTConfig(**TINY))
    tokens = torch.randint(0, 97, (8, 17), generator=torch.Generator().manual_seed(1))
    loader = DataLoader([{'input_ids': row} for row in tokens], batch_size=4)
    losses = []

    class Losses(Callback):
        def after_loss(self, state: State, logger: Logger) -> None:
            losses.append(state.loss.item())

    eval_options = dict(eval_dataloader=DataLoader([{'input_ids': row} for row in tokens[:4]], batch_size=4),
                        eval_interval='1ba') if evaluate else {}
    trainer = Trainer(model=model, train_dataloader=loader, max_duration=f'{steps}ba', device='cpu',
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.1), progress_bar=False,
                      callbacks=[*callbacks, Losses()], **eval_options)
    trainer.fit()
    trainer.close()
    return losses


def test_outputs_released_after_loss():
    by_default, released = OutputsAtBatchEnd(), OutputsAtBatchEnd()
    default_losses = train_losses([by_default])
    released_losses = train_losses([ReleaseOutputs(), released])
    assert by_default.held == [True, True, True]  # Composer's default: the logits outlive the step
    assert released.held == [False, False, False]
    assert released_losses == default_losses
    assert len(released_losses) == 3


def test_outputs_kept_with_train_metrics():
    with_metrics = OutputsAtBatchEnd()
    train_losses([ReleaseOutputs(), with_metrics], model_class=WithTrainMetrics)
    assert with_metrics.held == [True, True, True]


class OutputsAtEvalEnd(Callback):
    """Record whether `state.outputs` is still a tensor once each evaluation has ended."""

    def __init__(self):
        self.held: list[bool] = []

    def eval_end(self, state: State, logger: Logger) -> None:
        self.held.append(isinstance(state.outputs, torch.Tensor))


def test_eval_outputs_released():
    by_default, released = OutputsAtEvalEnd(), OutputsAtEvalEnd()
    default_losses = train_losses([by_default], evaluate=True)
    released_losses = train_losses([ReleaseOutputs(), released], evaluate=True)
    assert by_default.held == [True, True, True]  # one evaluation after each of the 3 batches
    assert released.held == [False, False, False]
    assert released_losses == default_losses
