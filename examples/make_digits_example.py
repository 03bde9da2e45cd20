"""Build the shipped digits example: a small pruned CNN trained on real data.

Run ``python examples/make_digits_example.py`` (from any directory) to (re)create, next to this
script:

* ``digits_cnn.pt2``     -- the model as a ``torch.export`` ExportedProgram, input (1, 1, 8, 8)
* ``digits_calib.npy``   -- float32 (200, 1, 8, 8) training images for quantization calibration
* ``digits_test.npz``    -- the held-out test split: ``x`` float32 (M, 1, 8, 8), ``y`` int64 (M,)
* ``digits_labels.txt``  -- class names ``0``..``9``, one per line

Why this example looks the way it does:

* Real data. scikit-learn's 8x8 handwritten digits ship with the package (no download), so
  accuracy before and after export/quantization is a meaningful number, not noise on random
  weights.
* Pruned. 25% of the output filters of the 2nd and 3rd convolutions are zeroed with
  ``torch.nn.utils.prune.ln_structured`` and the masks are baked into the weights. The matching
  BatchNorm layers are deliberately left as trained, so each pruned channel carries a constant
  (conv bias through BatchNorm) instead of zero; after ReLU some of those constants are 0 and
  some are not -- the cases the export tool's dead/constant-channel handling has to get right.
* ExportedProgram. ``.pt2`` files are loaded with ``torch.export.load`` and need no
  ``--allow-pickle``, unlike a pickled ``nn.Module``.

Everything is seeded and single-threaded, so reruns give the same accuracies and weights; the
``.npy``, ``.npz`` and ``.txt`` outputs are byte-identical across runs (the ``.pt2`` is not:
``torch.export.save`` writes a random serialization id and source paths into it). Each output
is written to a temporary file in this directory and moved into place with ``os.replace``.
"""
from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils import prune

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
BATCH = 64
EPOCHS = 20
FINETUNE_EPOCHS = 3
PRUNE_AMOUNT = 0.25
N_CALIB = 200


class DigitsCNN(nn.Module):
    """Three 3x3 conv blocks on 8x8 grey images, global average pool, linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu(self.bn3(self.conv3(x)))
        x = torch.flatten(self.gap(x), 1)
        return self.fc(x)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 (N, 1, 8, 8) in [0, 1] and int64 labels, split 80/20 stratified."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y
    )
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(y_test),
    )


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def atomic_write(name: str, data: bytes) -> Path:
    """Write ``data`` to OUT_DIR/name via a temporary file in the same directory."""
    path = OUT_DIR / name
    fd, tmp = tempfile.mkstemp(dir=OUT_DIR, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Like ``np.savez`` (readable by ``np.load``) but with fixed zip timestamps, so reruns are
    byte-identical."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy_bytes(arr))
    return buf.getvalue()


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)

    x_train_np, x_test_np, y_train_np, y_test_np = load_data()
    x_train, y_train = torch.from_numpy(x_train_np), torch.from_numpy(y_train_np)
    x_test, y_test = torch.from_numpy(x_test_np), torch.from_numpy(y_test_np)

    model = DigitsCNN()
    train(model, x_train, y_train, EPOCHS, 1e-2, gen)
    acc_trained = accuracy(model, x_test, y_test)

    pruned = [model.conv2, model.conv3]
    for conv in pruned:
        prune.ln_structured(conv, "weight", amount=PRUNE_AMOUNT, n=1, dim=0)
    acc_pruned = accuracy(model, x_test, y_test)
    train(model, x_train, y_train, FINETUNE_EPOCHS, 1e-3, gen)
    for conv in pruned:
        prune.remove(conv, "weight")
    acc_finetuned = accuracy(model, x_test, y_test)
    dead = [int((conv.weight.detach().abs().sum((1, 2, 3)) == 0).sum()) for conv in pruned]
    print(
        f"float test accuracy: trained {acc_trained:.4f}, pruned {acc_pruned:.4f}, "
        f"pruned+fine-tuned {acc_finetuned:.4f} "
        f"(zeroed filters: conv2 {dead[0]}/32, conv3 {dead[1]}/32)"
    )

    model.eval()
    ep = torch.export.export(model, (torch.zeros(1, 1, 8, 8),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    pt2_path = atomic_write("digits_cnn.pt2", buf.getvalue())

    # Check the file on disk, not the in-memory program. It was exported with batch 1, so run
    # it one sample at a time.
    loaded = torch.export.load(pt2_path).module()
    with torch.no_grad():
        eager = model(x_test)
        reloaded = torch.cat([loaded(x_test[i : i + 1]) for i in range(len(x_test))])
    max_diff = (eager - reloaded).abs().max().item()
    acc_loaded = (reloaded.argmax(1) == y_test).float().mean().item()
    if max_diff >= 1e-5:
        raise RuntimeError(f"reloaded program differs from eager: max |diff| {max_diff:.3g}")
    print(
        f"reloaded {pt2_path.name}: test accuracy {acc_loaded:.4f}, "
        f"max |diff| vs eager {max_diff:.2g}"
    )

    calib_idx = np.random.default_rng(SEED).permutation(len(x_train_np))[:N_CALIB]
    outputs = [
        pt2_path,
        atomic_write("digits_calib.npy", npy_bytes(x_train_np[calib_idx])),
        atomic_write("digits_test.npz", npz_bytes(x=x_test_np, y=y_test_np)),
        atomic_write("digits_labels.txt", "".join(f"{i}\n" for i in range(10)).encode()),
    ]
    print(
        f"wrote {len(x_train_np)} train / {len(x_test_np)} test samples to {OUT_DIR}: "
        + ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in outputs)
    )


if __name__ == "__main__":
    main()
