"""The LeNet-style CNN of Katib's pytorch-mnist example, so speed comparisons are fair."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  # the conventional name
from torch import nn

# Multiply-adds x 2 per image for one forward pass; a training step costs about three
# forward passes (forward, input gradients, weight gradients).
FORWARD_FLOP_PER_SAMPLE = 2 * (
    24 * 24 * 20 * 1 * 5 * 5  # conv 1->20, 5x5, on 28x28
    + 8 * 8 * 50 * 20 * 5 * 5  # conv 20->50, 5x5, on 12x12
    + 800 * 500  # fc 800->500
    + 500 * 10  # fc 500->10
)
TRAIN_FLOP_PER_SAMPLE = 3 * FORWARD_FLOP_PER_SAMPLE


class LeNet(nn.Module):
    """conv 1->20 k5, pool, conv 20->50 k5, pool, fc 800->500, [dropout], fc 500->10."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(500, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits (the loss applies log-softmax itself).

        Max-pooling and ReLU commute (ReLU is monotonic), so pooling first computes the
        same values and gradients as the classic relu-then-pool while ReLU and its
        gradient touch a quarter of the elements; pooling's output is free to overwrite.
        """
        x = F.relu(F.max_pool2d(self.conv1(images), 2), inplace=True)
        x = F.relu(F.max_pool2d(self.conv2(x), 2), inplace=True)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout(x))  # type: ignore[no-any-return]
