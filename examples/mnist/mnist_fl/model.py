"""A small CNN for 28x28 MNIST digits (about 47k parameters, fast on one CPU core)."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """conv(1->16, 5x5) -> pool -> conv(16->32, 5x5) -> pool -> fc(512->64) -> fc(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # 16 x 12 x 12
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # 32 x 4 x 4
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)  # logits
