"""The CPU training step through the compiled kernels of `trainer/kernels`, when they are built.

The kernels run forward, loss, backward and the optimizer update of the LeNet with one sgemm
per convolution and per linear layer and the rest fused around them (see lenet_step.cpp). The
model, its initialisation, the batches and the update rules are the eager path's: the kernels
read and write the model's own parameters and the optimizer's own state, and dropout draws
its mask exactly as `F.dropout` does, so both paths consume the random stream alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch

from mnist_trainer.model import LeNet
from mnist_trainer.optim import BETA1, BETA2, EPSILON, SGD, Adam, Optimizer

KERNELS_MODULE = "mnist_trainer_kernels"
KERNEL_CHOICES = ("auto", "compiled", "eager")
BUILD_HINT = "build them with `pip install --no-build-isolation trainer/kernels`"

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _load() -> ModuleType | None:
    try:
        return importlib.import_module(KERNELS_MODULE)
    except ImportError:
        return None


_KERNELS = _load()


class KernelsUnavailableError(Exception):
    """`--kernels=compiled` was asked for where the compiled step cannot run."""


def instructions() -> str | None:
    """Name the vector instructions the kernels chose on this CPU; None when not built."""
    return None if _KERNELS is None else str(_KERNELS.instructions())


def use_compiled(choice: str, device: torch.device) -> bool:
    """Whether the steps run compiled: `auto` takes them on the CPU when they are built."""
    if choice == "eager":
        return False
    usable = _KERNELS is not None and device.type == "cpu"
    if choice == "compiled" and not usable:
        reason = "they run on the CPU only" if _KERNELS is not None else "they are not built"
        raise KernelsUnavailableError(f"--kernels=compiled: {reason}; {BUILD_HINT}")
    return usable


def describe(compiled: bool) -> str:
    """How the start line names the path: `compiled-avx512`, or `eager`."""
    return f"compiled-{instructions()}" if compiled else "eager"


def parameters(model: LeNet) -> list[torch.Tensor]:
    """List the LeNet's parameters in the order the kernels take them."""
    layers = (model.conv1, model.conv2, model.fc1, model.fc2)
    return [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]


class CompiledStep:
    """One training step in one call into the kernels: forward, backward and the update.

    The update is the optimizer's own rule on its own state, so either path can carry on
    from the other. No `.grad` is kept: the gradients live only inside the step.
    """

    def __init__(self, model: LeNet, optimizer: Optimizer, threads: int) -> None:
        if _KERNELS is None:
            raise KernelsUnavailableError(f"the compiled kernels are not built; {BUILD_HINT}")
        self.kernels = _KERNELS
        self.model = model.to(memory_format=torch.channels_last)  # conv2 updated in place
        self.optimizer = optimizer
        self.threads = threads
        self.params = parameters(model)
        if [id(p) for p in optimizer.params] != [id(p) for p in self.params]:
            raise ValueError("the optimizer must update the model's parameters, in order")
        dropout = model.dropout
        self.dropout = dropout.p if isinstance(dropout, torch.nn.Dropout) else 0.0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Step on one batch; return its mean loss as a 0-d tensor, like the eager step."""
        mask = self.dropout_mask(len(labels))
        opt = self.optimizer
        if isinstance(opt, SGD):
            first = opt.velocity[0] is None
            if opt.momentum and first:
                opt.velocity = [torch.empty_like(p) for p in self.params]
            velocity = [v for v in opt.velocity if v is not None]
            loss = self.kernels.sgd_step(
                images, labels, self.params, mask, self.threads,
                velocity, opt.lr, opt.momentum, opt.weight_decay, first,
            )  # fmt: skip
        elif isinstance(opt, Adam):
            opt.steps += 1
            loss = self.kernels.adam_step(
                images, labels, self.params, mask, self.threads,
                opt.mean, opt.square, opt.lr, opt.weight_decay, opt.decoupled, opt.steps,
                BETA1, BETA2, EPSILON,
            )  # fmt: skip
        else:
            raise TypeError(f"no compiled update for {type(opt).__name__}")
        return torch.tensor(loss, dtype=torch.float32)

    def dropout_mask(self, batch: int) -> torch.Tensor | None:
        """F.dropout's own draw and scaling, so both paths take the same random numbers."""
        if self.dropout == 0 or not self.model.training:
            return None
        keep = 1 - self.dropout
        return torch.empty(batch, self.model.fc1.out_features).bernoulli_(keep).div_(keep)
