"""The ten models of ncnn's `benchncnn`, rebuilt in PyTorch from their standard definitions (the
published benchmark graphs are not shipped). `ncnn-benchmark-models.csv` gives each one's input
size and MAC split (dense conv / depthwise / fc); `fit_estimator.py --check-macs` compares our
rebuilds with it. Weights are random: latency does not depend on them.

Sources of the definitions: AlexNet and GoogLeNet as in Caffe's bvlc_* prototxts (grouped convs,
LRN, ceil-mode pooling); MobileNet v1 (Howard et al. 2017); MobileNet-SSD as in chuanqi305's Caffe
model (1x1 heads); ResNet-18 (He et al. 2016); ShuffleNet v1 1x g=3 (Zhang et al. 2018);
SqueezeNet v1.1 (DeepScale); VGG-16; YOLOv4-tiny (Darknet cfg); BlazeFace front model (Bazarevsky
et al. 2019, MediaPipe's 128x128 detector)."""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.zoo import ResNet18


def _cbr(cin: int, cout: int, k: int, s: int = 1, p: int | None = None, g: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2 if p is None else p, groups=g, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class AlexNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75)
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, 4), nn.ReLU(), lrn(), pool(),
            nn.Conv2d(96, 256, 5, 1, 2, groups=2), nn.ReLU(), lrn(), pool(),
            nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, 1, 1, groups=2), nn.ReLU(),
            nn.Conv2d(384, 256, 3, 1, 1, groups=2), nn.ReLU(), pool(),
        )
        self.classifier = nn.Sequential(nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(torch.flatten(self.features(x), 1)), 1)


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, cp: int) -> None:
        super().__init__()
        conv = lambda a, b, k: nn.Sequential(nn.Conv2d(a, b, k, 1, k // 2), nn.ReLU())
        self.b1 = conv(cin, c1, 1)
        self.b3 = nn.Sequential(conv(cin, r3, 1), conv(r3, c3, 3))
        self.b5 = nn.Sequential(conv(cin, r5, 1), conv(r5, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
        lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75)
        self.net = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), pool(), lrn(),
            nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 192, 3, 1, 1), nn.ReLU(), lrn(), pool(),
            Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool(),
            Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128), pool(),
            Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(1024, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(torch.flatten(self.net(x), 1)), 1)


MOBILENET_V1 = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + [(512, 512, 1)] * 5 + [
    (512, 1024, 2), (1024, 1024, 1)]


def _dw_pw(cin: int, cout: int, s: int) -> nn.Sequential:
    return nn.Sequential(_cbr(cin, cin, 3, s, g=cin), _cbr(cin, cout, 1))


class MobileNetV1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 32, 3, 2), *[_dw_pw(a, b, s) for a, b, s in MOBILENET_V1])
        self.fc = nn.Linear(1024, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)), 1)


class MobileNetSSD(nn.Module):
    """chuanqi305's MobileNet-SSD (VOC, 21 classes) without PriorBox/DetectionOutput (post-processing)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 32, 3, 2), *[_dw_pw(a, b, s) for a, b, s in MOBILENET_V1[:11]])  # 19x19x512
        self.stage13 = nn.Sequential(*[_dw_pw(a, b, s) for a, b, s in MOBILENET_V1[11:]])  # 10x10x1024
        extras = [(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 64, 128)]
        self.extras = nn.ModuleList(nn.Sequential(_cbr(a, r, 1), _cbr(r, b, 3, 2)) for a, r, b in extras)
        chans, priors = [512, 1024, 512, 256, 256, 128], [3, 6, 6, 6, 6, 6]
        self.loc = nn.ModuleList(nn.Conv2d(c, p * 4, 1) for c, p in zip(chans, priors))
        self.conf = nn.ModuleList(nn.Conv2d(c, p * 21, 1) for c, p in zip(chans, priors))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [self.stem(x)]
        feats.append(self.stage13(feats[0]))
        for extra in self.extras:
            feats.append(extra(feats[-1]))
        flat = lambda head, f: torch.flatten(head(f).permute(0, 2, 3, 1), 1)
        loc = torch.cat([flat(h, f) for h, f in zip(self.loc, feats)], 1)
        conf = torch.cat([flat(h, f) for h, f in zip(self.conf, feats)], 1)
        return loc, torch.softmax(conf.reshape(1, -1, 21), -1)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_grouped: bool) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        out = cout - cin if stride == 2 else cout
        mid = out // 4
        self.pw1 = _cbr(cin, mid, 1, g=groups if first_grouped else 1)
        self.dw = _cbr(mid, mid, 3, stride, g=mid, act=None)
        self.pw2 = _cbr(mid, out, 1, g=groups, act=None)
        self.shuffle_groups = groups if first_grouped else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw1(x)
        if self.shuffle_groups > 1:
            n, c, h, w = y.shape
            y = y.reshape(n, self.shuffle_groups, c // self.shuffle_groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.pw2(self.dw(y))
        if self.stride == 2:
            return torch.relu(torch.cat([nn.functional.avg_pool2d(x, 3, 2, 1), y], 1))
        return torch.relu(x + y)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int = 3) -> None:
        super().__init__()
        chans = {3: [24, 240, 480, 960]}[groups]
        layers: list[nn.Module] = [_cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
        cin = chans[0]
        for stage, repeat in zip(chans[1:], (4, 8, 4)):
            for i in range(repeat):
                layers.append(ShuffleUnit(cin, stage, 2 if i == 0 else 1, groups, first_grouped=cin != 24))
                cin = stage
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(960, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)), 1)


class Fire(nn.Module):
    def __init__(self, cin: int, s: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, s, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(s, e1, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(s, e3, 3, 1, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


class SqueezeNet11(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
        self.net = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256), nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.flatten(self.net(x), 1), 1)


class VGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(25088, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(torch.flatten(self.features(x), 1)), 1)


def _leaky(cin: int, cout: int, k: int, s: int = 1) -> nn.Sequential:
    return _cbr(cin, cout, k, s, act=lambda: nn.LeakyReLU(0.1))


class CSPTiny(nn.Module):
    """YOLOv4-tiny's block: conv, route the second half, two convs, concat, 1x1 conv, concat."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = _leaky(c, c, 3)
        self.c2 = _leaky(c // 2, c // 2, 3)
        self.c3 = _leaky(c // 2, c // 2, 3)
        self.c4 = _leaky(c, c, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.c1(x)
        a = self.c2(r[:, r.shape[1] // 2:])
        b = self.c3(a)
        feat = self.c4(torch.cat([b, a], 1))
        return nn.functional.max_pool2d(torch.cat([r, feat], 1), 2, 2), feat


class YoloV4Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_leaky(3, 32, 3, 2), _leaky(32, 64, 3, 2))
        self.b1, self.b2, self.b3 = CSPTiny(64), CSPTiny(128), CSPTiny(256)
        self.c5 = _leaky(512, 512, 3)
        self.c6 = _leaky(512, 256, 1)
        self.h1 = nn.Sequential(_leaky(256, 512, 3), nn.Conv2d(512, 255, 1))
        self.up = _leaky(256, 128, 1)
        self.h2 = nn.Sequential(_leaky(384, 256, 3), nn.Conv2d(256, 255, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.b1(self.stem(x))
        x, _ = self.b2(x)
        x, feat = self.b3(x)
        p = self.c6(self.c5(x))
        up = nn.functional.interpolate(self.up(p), scale_factor=2.0, mode="nearest")
        return self.h1(p), self.h2(torch.cat([up, feat], 1))


class BlazeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride, self.pad = stride, cout - cin
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.stride == 1 else nn.functional.max_pool2d(x, 2, 2)
        if self.pad:
            h = nn.functional.pad(h, (0, 0, 0, 0, 0, self.pad))
        return torch.relu(self.pw(self.dw(x)) + h)


class BlazeFace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        blocks = [(24, 24), (24, 28), (28, 32, 2), (32, 36), (36, 42), (42, 48, 2), (48, 56), (56, 64), (64, 72), (72, 80), (80, 88)]
        self.b1 = nn.Sequential(nn.Conv2d(3, 24, 5, 2, 2), nn.ReLU(), *[BlazeBlock(*b) for b in blocks])
        self.b2 = nn.Sequential(BlazeBlock(88, 96, 2), *[BlazeBlock(96, 96) for _ in range(4)])
        self.c8, self.c16 = nn.Conv2d(88, 2, 1), nn.Conv2d(96, 6, 1)
        self.r8, self.r16 = nn.Conv2d(88, 32, 1), nn.Conv2d(96, 96, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.b1(x)
        f16 = self.b2(f8)
        flat = lambda t: torch.flatten(t.permute(0, 2, 3, 1), 1)
        scores = torch.cat([flat(self.c8(f8)), flat(self.c16(f16))], 1)
        boxes = torch.cat([flat(self.r8(f8)), flat(self.r16(f16))], 1)
        return torch.sigmoid(scores), boxes


# name in the published tables -> (constructor, input shape)
REFERENCE_MODELS = {
    "alexnet": (AlexNet, (1, 3, 227, 227)),
    "blazeface": (BlazeFace, (1, 3, 128, 128)),
    "googlenet": (GoogLeNet, (1, 3, 224, 224)),
    "mobilenet": (MobileNetV1, (1, 3, 224, 224)),
    "mobilenet_ssd": (MobileNetSSD, (1, 3, 300, 300)),
    "resnet18": (ResNet18, (1, 3, 224, 224)),
    "shufflenet": (ShuffleNetV1, (1, 3, 224, 224)),
    "squeezenet": (SqueezeNet11, (1, 3, 227, 227)),
    "vgg16": (VGG16, (1, 3, 224, 224)),
    "yolov4-tiny": (YoloV4Tiny, (1, 3, 416, 416)),
}


# ---------------------------------------------------------------- EfficientDet-Lite (LiteRT rows)
# EfficientNet-Lite backbone (Tan & Le 2019, lite variant: no squeeze-excite, ReLU6, stem and head
# not scaled, first and last stage repeats not scaled) + BiFPN + shared class/box heads (Tan et al.
# 2020; the -Lite configs of google/automl efficientdet/hparams_config.py: fpn_weight_method "sum",
# ReLU6). Without NMS post-processing (the TFLite_Detection_PostProcess op is not modelled).

EFFNET_BLOCKS = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                 (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # expand, kernel, stride, channels, repeats (B0)
# name: (backbone width, depth), input size, fpn filters, fpn repeats, head repeats
EFFICIENTDET_LITE = {
    "efficientdet-lite0": ((1.0, 1.0), 320, 64, 3, 3),
    "efficientdet-lite1": ((1.0, 1.1), 384, 88, 4, 3),
    "efficientdet-lite2": ((1.1, 1.2), 448, 112, 5, 3),
    "efficientdet-lite3": ((1.2, 1.4), 512, 160, 6, 4),
    "efficientdet-lite3x": ((1.2, 1.4), 640, 200, 6, 4),
    "efficientdet-lite4": ((1.4, 1.8), 640, 224, 7, 4),
}


def _round_filters(c: int, width: float, divisor: int = 8) -> int:
    c *= width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return int(new + divisor) if new < 0.9 * c else int(new)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = [_cbr(cin, mid, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [_cbr(mid, mid, k, stride, g=mid, act=nn.ReLU6), _cbr(mid, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class EfficientNetLiteFeatures(nn.Module):
    """Returns the stride-8, 16 and 32 feature maps."""

    def __init__(self, width: float, depth: float) -> None:
        super().__init__()
        import math

        self.stem = _cbr(3, 32, 3, 2, act=nn.ReLU6)
        cin, stages = 32, []
        for i, (e, k, s, c, r) in enumerate(EFFNET_BLOCKS):
            cout = _round_filters(c, width)
            repeats = r if i in (0, len(EFFNET_BLOCKS) - 1) else math.ceil(r * depth)
            blocks = []
            for j in range(repeats):
                blocks.append(MBConv(cin, cout, e, k, s if j == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.channels = [_round_filters(c, width) for c in (40, 112, 320)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in (2, 4, 6):
                feats.append(x)
        return feats


def _sep(c: int, cout: int | None = None, act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.Conv2d(c, cout or c, 1)]
    if cout is None:
        layers.append(nn.BatchNorm2d(c))
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class BiFPNLayer(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.td = nn.ModuleList(_sep(w) for _ in range(4))  # P6, P5, P4, P3 top-down
        self.bu = nn.ModuleList(_sep(w) for _ in range(4))  # P4, P5, P6, P7 bottom-up

    def forward(self, p: list[torch.Tensor]) -> list[torch.Tensor]:
        up = lambda t, like: nn.functional.interpolate(t, size=like.shape[-2:], mode="nearest")
        down = lambda t: nn.functional.max_pool2d(t, 3, 2, 1)
        relu6 = nn.functional.relu6
        td = [p[4]]
        for i, level in enumerate((3, 2, 1, 0)):
            td.append(self.td[i](relu6(p[level] + up(td[-1], p[level]))))
        # td = [P7, P6td, P5td, P4td, P3out]
        out = [td[4]]
        for i, level in enumerate((1, 2, 3)):
            out.append(self.bu[i](relu6(p[level] + td[4 - level] + down(out[-1]))))
        out.append(self.bu[3](relu6(p[4] + down(out[-1]))))
        return out


class EfficientDetLite(nn.Module):
    def __init__(self, variant: str) -> None:
        super().__init__()
        (width, depth), _, w, fpn_repeats, head_repeats = EFFICIENTDET_LITE[variant]
        self.backbone = EfficientNetLiteFeatures(width, depth)
        c3, c4, c5 = self.backbone.channels
        self.resample = nn.ModuleList(_cbr(c, w, 1, act=None) for c in (c3, c4, c5))
        self.bifpn = nn.Sequential(*[BiFPNLayer(w) for _ in range(fpn_repeats)])
        self.class_net = nn.Sequential(*[_sep(w, act=True) for _ in range(head_repeats)])
        self.class_out = _sep(w, 9 * 90)
        self.box_net = nn.Sequential(*[_sep(w, act=True) for _ in range(head_repeats)])
        self.box_out = _sep(w, 9 * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c3, c4, c5 = self.backbone(x)
        p = [r(c) for r, c in zip(self.resample, (c3, c4, c5), strict=True)]
        p.append(nn.functional.max_pool2d(p[-1], 3, 2, 1))  # P6
        p.append(nn.functional.max_pool2d(p[-1], 3, 2, 1))  # P7
        for layer in self.bifpn:
            p = layer(p)
        flat = lambda t: torch.flatten(t.permute(0, 2, 3, 1), 1)
        scores = torch.cat([flat(self.class_out(self.class_net(f))) for f in p], 1)
        boxes = torch.cat([flat(self.box_out(self.box_net(f))) for f in p], 1)
        return torch.sigmoid(scores), boxes


# name in tflite-published-latency.csv -> (constructor, input shape)
LITERT_REFERENCE_MODELS = {
    name: ((lambda n=name: EfficientDetLite(n)), (1, 3, size, size))
    for name, (_, size, _, _, _) in EFFICIENTDET_LITE.items()
}


# ---------------------------------------------------------------- MobileNetV3 (an out-of-family check)
# Howard et al. 2019, Tables 1 and 2: kernel, expansion, out, squeeze-excite, hard-swish, stride.
MOBILENET_V3 = {
    "large": ([(3, 16, 16, 0, 0, 1), (3, 64, 24, 0, 0, 2), (3, 72, 24, 0, 0, 1), (5, 72, 40, 1, 0, 2), (5, 120, 40, 1, 0, 1),
               (5, 120, 40, 1, 0, 1), (3, 240, 80, 0, 1, 2), (3, 200, 80, 0, 1, 1), (3, 184, 80, 0, 1, 1),
               (3, 184, 80, 0, 1, 1), (3, 480, 112, 1, 1, 1), (3, 672, 112, 1, 1, 1), (5, 672, 160, 1, 1, 2),
               (5, 960, 160, 1, 1, 1), (5, 960, 160, 1, 1, 1)], 960, 1280),
    "small": ([(3, 16, 16, 1, 0, 2), (3, 72, 24, 0, 0, 2), (3, 88, 24, 0, 0, 1), (5, 96, 40, 1, 1, 2), (5, 240, 40, 1, 1, 1),
               (5, 240, 40, 1, 1, 1), (5, 120, 48, 1, 1, 1), (5, 144, 48, 1, 1, 1), (5, 288, 96, 1, 1, 2),
               (5, 576, 96, 1, 1, 1), (5, 576, 96, 1, 1, 1)], 576, 1024),
}


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        mid = _round_filters(c // 4, 1.0)
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class MobileNetV3Block(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: int, hs: int, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = [_cbr(cin, exp, 1, act=act)] if exp != cin else []
        layers.append(_cbr(exp, exp, k, stride, g=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp))
        layers.append(_cbr(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self, size: str) -> None:
        super().__init__()
        blocks, last, hidden = MOBILENET_V3[size]
        layers: list[nn.Module] = [_cbr(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for k, exp, cout, se, hs, s in blocks:
            layers.append(MobileNetV3Block(cin, k, exp, cout, se, hs, s))
            cin = cout
        layers.append(_cbr(cin, last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(), nn.Linear(hidden, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# models only checked against other-published-latency.csv (never fitted on)
CHECK_MODELS = {
    "mobilenet_v3_large": ((lambda: MobileNetV3("large")), (1, 3, 224, 224)),
    "mobilenet_v3_small": ((lambda: MobileNetV3("small")), (1, 3, 224, 224)),
}
