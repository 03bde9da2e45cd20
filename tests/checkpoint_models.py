"""A tiny detector shaped like ultralytics' (backbone, two heads, output `(y, [p3, p4])` in eval
mode) for the checkpoint-loading tests. It lives in an importable module so that the pickled
checkpoint dicts the tests write can be unpickled again."""
from __future__ import annotations

import torch
from torch import nn


class TinyDetect(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU())
        self.head3 = nn.Conv2d(8, 4 + classes, 1)
        self.head4 = nn.Conv2d(16, 4 + classes, 1)

    def forward(self, x: torch.Tensor):
        p3 = self.stem(x)
        p4 = self.down(p3)
        o3, o4 = self.head3(p3), self.head4(p4)
        y = torch.cat([o3.flatten(2), o4.flatten(2)], 2).sigmoid()
        return y, [o3, o4]


class DictOut(nn.Module):
    """A dict output: {"boxes": ..., "scores": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor):
        y = self.conv(x)
        return {"boxes": y[:, :4].mean((2, 3)), "scores": torch.softmax(y[:, 4:].flatten(1), 1)}
