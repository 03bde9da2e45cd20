"""The PTQ benchmark's model zoo: mobile architectures with random weights (weights=None) whose
BatchNorm running statistics are re-estimated on real images, as training leaves them.

Images: 64 random crops of scikit-learn's two sample photos (`load_sample_images()`) re-estimate
BatchNorm, 64 OTHER crops calibrate int8, 32 more crops (never seen by either) evaluate. Each model
is exported once with `edgepack.export(..., formats=("onnx",))` and its processed fp32 ONNX (BN
folded) cached under benchmarks/results/ptq/ (gitignored) with the three crop sets.

Needs (benchmarks only): pip install torch==2.13.0 torchvision==0.28.0 timm ultralytics scikit-learn
Run with PYTHONPATH=/work/shared/tools/torchvision-cpu-shim YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "results" / "ptq"
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
SETS = {"bn": (64, 1), "calib": (64, 2), "eval": (32, 3)}  # name -> (count, seed)

MODELS = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "mnasnet0_5", "repvit_m0_9",
          "mobilenetv4_conv_small", "deeplabv3_mobilenet_v3_large", "squeezenet1_1", "resnet18", "yolov8n",
          "efficientformerv2_s0", "mobilevit_xxs")
TIMM = {"repvit_m0_9", "mobilenetv4_conv_small", "efficientformerv2_s0", "mobilevit_xxs", "fastvit_t8"}


def crops(count: int, seed: int, size: int = SIZE) -> np.ndarray:
    """(count, 3, size, size) float32, ImageNet-normalized random crops (scale 0.1-1 of the photo's
    area, aspect 3/4-4/3, random horizontal flip) of scikit-learn's sample photos."""
    import torch
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.asarray(p, np.float32) / 255.0).permute(2, 0, 1) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[1:]
        area = rng.uniform(0.1, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = min(h, int(round(np.sqrt(area / aspect)))), min(w, int(round(np.sqrt(area * aspect))))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[:, y:y + ch, x:x + cw][None]
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop.numpy()
    return (out - MEAN) / STD


class _First:
    """Wraps a model whose forward returns a dict/tuple so that it returns one tensor."""

    def __new__(cls, model, key):
        import torch

        class First(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, x):
                y = self.inner(x)
                if isinstance(y, dict) and key not in y:  # ultralytics in train mode (BN re-estimation)
                    return next(iter(y.values()))
                return y[key] if isinstance(y, (dict, list, tuple)) else y

        return First()


def build(name: str):
    """The float model, random weights, eval mode (BatchNorm statistics not yet re-estimated)."""
    if name in TIMM:
        import timm

        return timm.create_model(name, pretrained=False).eval()
    if name == "yolov8n":
        from ultralytics import YOLO

        model = YOLO("yolov8n.yaml").model.eval()
        for m in model.modules():  # export form of the head: one (1, 84, anchors) tensor
            if type(m).__name__ == "Detect":
                m.export, m.format = True, "onnx"
        return _First(model, 0)
    import torchvision

    if name == "deeplabv3_mobilenet_v3_large":
        model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                             aux_loss=False)
        return _First(model.eval(), "out").eval()
    return getattr(torchvision.models, name)(weights=None).eval()


def reestimate_batchnorm(model, images: np.ndarray, batch: int = 16):
    """Running mean/var of every BatchNorm = its cumulative average over `images` (train mode,
    momentum None), as training leaves them; then eval mode."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(torch.from_numpy(images[i:i + batch]))
    return model.eval()


def prepare(name: str) -> Path:
    """Cached fp32 ONNX of `name` (processed by edgepack: BN folded), exported on first use."""
    path = CACHE / f"{name}.fp32.onnx"
    if path.is_file():
        return path
    import torch

    import edgepack

    torch.manual_seed(0)
    model = reestimate_batchnorm(build(name), images("bn"))
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ptq-zoo-") as tmp:
        edgepack.export(model, output_dir=tmp, input_shape=f"1x3x{SIZE}x{SIZE}", name=name, formats=("onnx",))
        shutil.copy(Path(tmp) / f"{name}.fp32.onnx", path)
    return path


def images(which: str) -> np.ndarray:
    """One of the crop sets ('bn', 'calib', 'eval'), cached as .npy."""
    path = CACHE / f"crops_{which}.npy"
    if path.is_file():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    count, seed = SETS[which]
    data = crops(count, seed)
    np.save(path, data)
    return data


if __name__ == "__main__":
    for n in sys.argv[1:] or MODELS:
        print(n, prepare(n), flush=True)
