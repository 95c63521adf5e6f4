"""SGD, Adam and AdamW as plain in-place tensor updates, without torch.optim.

torch.optim imports torch._dynamo the first time an optimizer is built: about 1 s of
every trial process, 9% of a one-epoch trial. Its per-step bookkeeping also costs more
than the arithmetic for a model this small. The updates here are torch.optim's (same
defaults, same formulas; no dampening, Nesterov or AMSGrad, which no tuning searches),
and a test steps both side by side.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch

# torch.optim.Adam's and AdamW's defaults.
BETA1 = 0.9
BETA2 = 0.999
EPSILON = 1e-8


class Optimizer(ABC):
    """Updates parameters in place from the gradients the last backward pass left."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float):
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr
        self.weight_decay = weight_decay

    def zero_grad(self) -> None:
        """Drop the gradients, so the next backward pass writes fresh ones."""
        for param in self.params:
            param.grad = None

    @abstractmethod
    def step(self) -> None:
        """Apply one update."""


class SGD(Optimizer):
    """torch.optim.SGD: L2 weight decay added to the gradient, then heavy-ball momentum."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
    ) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.velocity: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        """P -= lr * v, with v = momentum * v + (g + weight_decay * p); v starts at g."""
        for index, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            if self.weight_decay:  # in place: the gradient is dropped after the step
                grad.add_(param, alpha=self.weight_decay)
            if self.momentum:
                velocity = self.velocity[index]
                if velocity is None:
                    velocity = self.velocity[index] = grad.clone()
                else:  # one pass over memory instead of mul_ then add_
                    torch.add(grad, velocity, alpha=self.momentum, out=velocity)
                grad = velocity
            param.add_(grad, alpha=-self.lr)


class Adam(Optimizer):
    """torch.optim.Adam, or torch.optim.AdamW when the weight decay is `decoupled`."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        weight_decay: float,
        decoupled: bool,
    ) -> None:
        super().__init__(params, lr, weight_decay)
        self.decoupled = decoupled
        self.steps = 0
        self.mean = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.square = [
            torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params
        ]

    @torch.no_grad()
    def step(self) -> None:
        """Bias-corrected moment estimates; AdamW shrinks the weights instead of the gradient."""
        self.steps += 1
        step_size = self.lr / (1 - BETA1**self.steps)
        root_correction = math.sqrt(1 - BETA2**self.steps)
        for param, mean, square in zip(self.params, self.mean, self.square, strict=True):
            grad = param.grad
            if grad is None:
                continue
            if self.weight_decay and self.decoupled:
                param.mul_(1 - self.lr * self.weight_decay)
            elif self.weight_decay:
                grad = grad.add(param, alpha=self.weight_decay)
            mean.lerp_(grad, 1 - BETA1)
            square.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
            denominator = (square.sqrt() / root_correction).add_(EPSILON)
            param.addcdiv_(mean, denominator, value=-step_size)
