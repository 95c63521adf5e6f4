"""The training loop: seeded batches from in-memory tensors, divergence caught per step."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812  # the conventional name

from mnist_trainer.compiled import CompiledStep, Step
from mnist_trainer.config import Hyperparameters
from mnist_trainer.data import Split
from mnist_trainer.model import LeNet
from mnist_trainer.optim import SGD, Adam, Optimizer

# Losses stay on the device and are checked for NaN/inf every this many steps, so a GPU
# is not stalled by a host round trip per step; the first bad step is still named exactly.
CHECK_EVERY = 50
# Evaluation batches: big enough for efficient kernels, small enough that their
# activations stay under the allocator's reuse threshold (fastest when measured: 500).
EVAL_BATCH = 500
# A CPU training step on a batch smaller than this runs on one thread. Every operator
# that opens an OpenMP parallel region wakes the other threads, about 45 context
# switches per LeNet step, and below this size the second thread's share of the
# arithmetic is worth less than those wake-ups: on two cores 2 threads took 1.39x as
# long as 1 at batch 8, 1.12x at 16, 1.01x at 24, and 0.94x at 32, 0.77x at 64
# (`benchmarks/trainer_step.py`). Evaluation batches keep every thread.
ONE_THREAD_BELOW_BATCH = 32
_HINT = "try a smaller --learning-rate or --weight-decay"


class DivergedError(Exception):
    """Training produced a NaN or infinite loss; the message names where."""


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy and accuracy of the model on one split."""

    accuracy: float
    loss: float


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced, for printing and reporting."""

    epoch: int
    train_loss: float
    validation: Evaluation
    seconds: float  # training only, without the validation pass


def step_threads(
    batch_size: int, threads: int, device: torch.device, compiled: bool = False
) -> int:
    """How many CPU threads the training steps use: one for small eager batches on the CPU.

    The compiled step wakes its threads once per step, not once per operator, so it keeps
    them all at every batch size.
    """
    if device.type == "cpu" and batch_size < ONE_THREAD_BELOW_BATCH and not compiled:
        return 1
    return threads


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block on `count` torch threads, then restore the process's own count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_optimizer(model: torch.nn.Module, hp: Hyperparameters) -> Optimizer:
    """SGD uses momentum; Adam and AdamW keep their standard betas and ignore it."""
    params = model.parameters()
    if hp.optimizer == "sgd":
        return SGD(params, lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay)
    return Adam(
        params,
        lr=hp.learning_rate,
        weight_decay=hp.weight_decay,
        decoupled=hp.optimizer == "adamw",
    )


def batches(
    size: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Index slices of a fresh seeded permutation, moved to `device` once per epoch.

    The last batch may be smaller. The permutation is drawn on the CPU so the batch order
    for a seed is the same on every device.
    """
    order = torch.randperm(size, generator=generator).to(device)
    for start in range(0, size, batch_size):
        yield order[start : start + batch_size]


def train_step(
    model: torch.nn.Module, optimizer: Optimizer, images: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """One step on one batch; return its mean loss, still on the device."""
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return loss.detach()


def evaluate(model: torch.nn.Module, split: Split) -> Evaluation:
    """Accuracy and mean loss over a whole split, in large batches without autograd."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=split.labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.labels.device)
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH):
            images = split.images[start : start + EVAL_BATCH]
            labels = split.labels[start : start + EVAL_BATCH]
            logits = model(images)
            total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == labels).sum()
    model.train()
    return Evaluation(accuracy=int(correct) / len(split), loss=float(total_loss) / len(split))


def _first_bad(losses: torch.Tensor) -> int | None:
    """Index of the first NaN/inf loss, or None when all are finite."""
    bad = ~torch.isfinite(losses)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def train(
    hp: Hyperparameters,
    train_split: Split,
    validation: Split,
    *,
    seed: int,
    on_epoch: Callable[[EpochResult], None],
    compiled: bool = False,
) -> torch.nn.Module:
    """Train for `hp.epochs`, calling `on_epoch` after each; raise DivergedError on NaN/inf.

    The steps run on `step_threads` of the process's threads (through the compiled kernels
    when `compiled`); evaluation on all of them.
    """
    device = train_split.labels.device
    training_threads = step_threads(hp.batch_size, torch.get_num_threads(), device, compiled)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    # channels_last lets oneDNN run the convolutions without reordering every batch.
    model = LeNet(hp.dropout).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, hp)
    step_on: Step = (
        CompiledStep(model, optimizer, training_threads)
        if compiled
        else functools.partial(train_step, model, optimizer)
    )
    window = torch.empty(CHECK_EVERY, device=device)
    step = 0
    for epoch in range(1, hp.epochs + 1):
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        filled = 0
        with threads(training_threads):
            for index in batches(len(train_split), hp.batch_size, generator, device):
                loss = step_on(train_split.images[index], train_split.labels[index])
                window[filled] = loss
                filled += 1
                step += 1
                if filled == CHECK_EVERY:
                    loss_sum += _check_window(window, filled, step, epoch, hp)
                    filled = 0
            loss_sum += _check_window(window, filled, step, epoch, hp)
        seconds = time.perf_counter() - started
        scores = evaluate(model, validation)
        if not (math.isfinite(scores.loss) and math.isfinite(scores.accuracy)):
            raise DivergedError(
                f"training diverged: validation loss is {scores.loss} after epoch {epoch} "
                f"(step {step}) with {hp.describe()}; {_HINT}"
            )
        steps_in_epoch = -(-len(train_split) // hp.batch_size)
        on_epoch(EpochResult(epoch, float(loss_sum) / steps_in_epoch, scores, seconds))
    return model


def _check_window(
    window: torch.Tensor, filled: int, step: int, epoch: int, hp: Hyperparameters
) -> torch.Tensor:
    """Raise DivergedError naming the first bad step; else return the window's loss sum."""
    losses = window[:filled]
    first = _first_bad(losses)
    if first is not None:
        bad_step = step - filled + first + 1
        raise DivergedError(
            f"training diverged: loss is {float(losses[first])} at step {bad_step} "
            f"(epoch {epoch}) with {hp.describe()}; {_HINT}"
        )
    return losses.double().sum()
