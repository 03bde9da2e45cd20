"""Small models for the loader and CLI tests (1x3x16x16 inputs, a few channels).

They live in an importable module so that pickled modules (`torch.save(model)`) can be loaded
again and so that `--arch models_for_tests:make_net` resolves; the tests folder is on sys.path
under pytest's default import mode, and the CLI tests put it on PYTHONPATH."""
from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """Conv-BN-ReLU x2, global average pool, Linear: fully convolutional, so any HxW works."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_net() -> Net:
    """The `--arch models_for_tests:make_net` factory."""
    return Net()


class FlatNet(nn.Module):
    """Conv then Flatten + Linear: only a 1x3x16x16 input fits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class TwoInputNet(nn.Module):
    """Two image inputs of different sizes, one output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        pa = torch.relu(self.a(image)).mean(dim=(2, 3))
        pb = torch.relu(self.b(depth)).mean(dim=(2, 3))
        return self.fc(torch.cat([pa, pb], dim=1))


def make_flat_net() -> FlatNet:
    return FlatNet()


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic non-trivial weights (BN statistics too) so outputs are not near zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


class RunningMax(nn.Module):
    """torch.cummax: neither ONNX exporter has a mapping for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, dim=-1).values


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.running_max = RunningMax()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.running_max(torch.relu(x)).mean(dim=(2, 3))


class CumMaxNet(nn.Module):
    """Conv then `head.running_max` (RunningMax): the export fails at that module, op aten.cummax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))
