"""TFLite exporter: an op x precision matrix and whole models.

Every case goes through `edgepack.export(..., formats=("tflite",), fp16=True)`: the artifacts are
run in LiteRT on the verification set and compared with PyTorch eager. Each asserts numerics
(fp32 rel_error <= 1e-4; fp16 weights + DEQUANTIZE, computed in fp32: rel_error <= 1e-2) and
structure (the op census: no TRANSPOSE in NHWC graphs, the TFLite op each ONNX op should become)."""
from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgepack
from benchmarks.zoo import BasicBlock, MobileNetV2, randomize_batchnorm

FP32_TOL = 1e-4
FP16_TOL = 1e-2


# ---------------------------------------------------------------- helpers


def prepare(model: nn.Module) -> nn.Module:
    """Seeded weights (the op table builds its modules at import), non-trivial BatchNorm statistics,
    LayerNorm / InstanceNorm affine parameters and a different PReLU slope per channel."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and not isinstance(m, nn.PReLU):
            m.reset_parameters()
        with torch.no_grad():
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, (nn.LayerNorm, nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return randomize_batchnorm(model)


def export(model: nn.Module, shape: str, out, formats=("tflite",), **kw) -> dict:
    return edgepack.export(prepare(model), output_dir=out, input_shape=shape, formats=formats, fp16=True, **kw)


def tflite(report: dict, precision: str) -> dict:
    return next(a for a in report["artifacts"] if a["format"] == "tflite" and a["precision"] == precision)


def check(report: dict, transposes: int | None = 0, **census: int) -> dict:
    """fp32 and fp16 TFLite artifacts within tolerance; `census`: exact TFLite op counts."""
    fp32, fp16 = tflite(report, "fp32"), tflite(report, "fp16")
    assert fp32["ok"], fp32["error"]
    assert fp32["fidelity"]["rel_error"] <= FP32_TOL, fp32["fidelity"]
    assert fp16["ok"], fp16["error"]
    assert fp16["fidelity"]["rel_error"] <= FP16_TOL, fp16["fidelity"]
    assert fp16["op_census"].get("DEQUANTIZE", 0) > 0 and "DEQUANTIZE" not in fp32["op_census"]
    assert {k: v for k, v in fp16["op_census"].items() if k != "DEQUANTIZE"} == fp32["op_census"]  # same graph
    ops = fp32["op_census"]
    if transposes is not None:
        assert ops.get("TRANSPOSE", 0) == fp32["transposes"] == transposes, ops
    for op, count in census.items():
        assert ops.get(op, 0) == count, (op, ops)
    return fp32


class Then(nn.Module):
    """A 3x3 conv (so the graph has weights and NHWC activations), then `fn(self, y)`; keyword
    modules are registered so `fn` can use them."""

    def __init__(self, fn, cin: int = 3, cout: int = 8, **modules: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.fn = fn
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor):
        return self.fn(self, self.conv(x))


def then(fn, **modules: nn.Module):
    return lambda: Then(fn, **modules)


def seq(*layers):
    return lambda: nn.Sequential(*layers)


class MatMulParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 12) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class Attention(nn.Module):
    """Two activations multiplied: a @ b^T (the Transpose is a relabelling, not a TRANSPOSE)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1)


IMG = "1x3x16x16"

# (id, model factory, input shape, expected census); census: exact counts, TRANSPOSE 0 unless given.
OPS = [
    # ---- convolution
    ("conv-valid", seq(nn.Conv2d(3, 8, 3)), IMG, {"CONV_2D": 1, "PAD": 0}),
    ("conv-same-relu-fused", seq(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), IMG, {"CONV_2D": 1, "RELU": 0}),
    ("conv-bn-folded", seq(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)), IMG, {"CONV_2D": 1}),
    ("conv-stride2-pad1-explicit-pad", seq(nn.Conv2d(3, 8, 3, 2, 1)), IMG, {"CONV_2D": 1, "PAD": 1}),
    ("conv-stride2-odd-input", seq(nn.Conv2d(3, 8, 3, 2, 1)), "1x3x15x15", {"CONV_2D": 1}),
    ("conv-dilation2", seq(nn.Conv2d(3, 8, 3, padding=2, dilation=2)), IMG, {"CONV_2D": 1}),
    ("conv-5x5-asymmetric-stride", seq(nn.Conv2d(3, 8, (5, 3), (2, 1), (2, 1))), IMG, {"CONV_2D": 1}),
    ("conv-depthwise", seq(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)), IMG, {"DEPTHWISE_CONV_2D": 1}),
    ("conv-depthwise-multiplier2", seq(nn.Conv2d(3, 6, 3, 2, 1, groups=3)), IMG, {"DEPTHWISE_CONV_2D": 1}),
    ("conv-grouped2", seq(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2)), IMG, {"CONV_2D": 3, "SPLIT": 1}),
    ("conv1d", seq(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 3, stride=2)), "1x4x40", {"CONV_2D": 2}),
    ("conv1d-depthwise", seq(nn.Conv1d(4, 8, 3, padding=1, groups=4)), "1x4x40", {"DEPTHWISE_CONV_2D": 1}),
    ("conv1d-mono-signal", seq(nn.Conv1d(1, 8, 5, stride=2), nn.ReLU()), "1x1x40", {"CONV_2D": 1}),
    ("conv-transpose-s2-p1-op1", seq(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1)),
     IMG, {"TRANSPOSE_CONV": 1}),
    ("conv-transpose-s2-k2", seq(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 2, 2)), IMG, {"TRANSPOSE_CONV": 1}),
    ("conv-transpose-depthwise-k4-s2", seq(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 8, 4, 2, 1, groups=8)), IMG,
     {"TRANSPOSE_CONV": 8, "SPLIT": 1}),
    # ---- fully connected
    ("linear-2d-input", seq(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 5)), "1x40", {"FULLY_CONNECTED": 2}),
    ("matmul-param", lambda: MatMulParam(), "1x8x16", {"FULLY_CONNECTED": 1}),
    ("matmul-two-activations-adj-y", lambda: Attention(), "1x8x16", {"BATCH_MATMUL": 1, "FULLY_CONNECTED": 2, "ADD": 0}),
    ("linear-3d-tokens-bias-folded", seq(nn.Linear(16, 12), nn.ReLU()), "1x8x16", {"FULLY_CONNECTED": 1, "ADD": 0, "RELU": 0}),
    ("flatten-softmax", then(lambda m, y: torch.softmax(y.flatten(1), 1)), IMG, {"SOFTMAX": 1, "GATHER": 1}),
    ("flatten-add-const-linear", then(lambda m, y: m.fc(torch.relu(y.flatten(1) + torch.linspace(-1, 1, 8 * 16 * 16))),
                                      fc=nn.Linear(8 * 16 * 16, 5)), IMG, {"FULLY_CONNECTED": 1, "GATHER": 0}),
    ("flatten-linear-permuted-weights", then(lambda m, y: m.fc(torch.flatten(F.relu(y), 1)), fc=nn.Linear(8 * 16 * 16, 5)),
     IMG, {"FULLY_CONNECTED": 1, "GATHER": 0}),
    ("reshape-linear", then(lambda m, y: m.fc(y.reshape(1, -1)), fc=nn.Linear(8 * 16 * 16, 5)), IMG,
     {"FULLY_CONNECTED": 1, "GATHER": 0}),
    ("tokens-linear-back-to-image-conv",
     then(lambda m, y: m.c2(m.fc(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, 8, 16, 16)),
          fc=nn.Linear(8, 8), c2=nn.Conv2d(8, 4, 1)), IMG, {"FULLY_CONNECTED": 1, "CONV_2D": 2}),
    ("flatten2-transpose-linear-tokens", then(lambda m, y: m.fc(y.flatten(2).transpose(1, 2)), fc=nn.Linear(8, 12)), IMG,
     {"FULLY_CONNECTED": 1, "RESHAPE": 1}),
    ("permute0321-flatten-linear", then(lambda m, y: m.fc(y.permute(0, 3, 2, 1).flatten(1)), fc=nn.Linear(8 * 16 * 16, 5)),
     IMG, {"FULLY_CONNECTED": 1, "GATHER": 0}),
    ("pool-flatten-linear", then(lambda m, y: m.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)), fc=nn.Linear(8, 5)),
     IMG, {"FULLY_CONNECTED": 1}),
    # ---- element-wise with broadcasting
    ("add-per-channel-const", then(lambda m, y: y + torch.linspace(-1, 1, 8).view(8, 1, 1)), IMG, {"ADD": 1}),
    ("sub-scalar", then(lambda m, y: y - 0.5), IMG, {"SUB": 1}),
    ("rsub-scalar", then(lambda m, y: 1.0 - y), IMG, {}),
    ("mul-nc11-tensor", then(lambda m, y: y * y.mean((2, 3), keepdim=True)), IMG, {"MUL": 1}),
    ("div-nc11-tensor", then(lambda m, y: y / (y.abs().mean((2, 3), keepdim=True) + 1.0)), IMG, {"DIV": 1}),
    ("add-two-branches", then(lambda m, y: y + m.b(y), b=nn.Conv2d(8, 8, 1)), IMG, {"ADD": 1}),
    ("mul-last-axis-const", then(lambda m, y: y * torch.linspace(0.5, 1.5, 16)), IMG, {"MUL": 1}),
    ("add-w-broadcast-tensor", then(lambda m, y: y + y.mean(1, keepdim=True)), IMG, {"ADD": 1}),
    # ---- activations
    ("relu", then(lambda m, y: torch.relu(y) * 2.0), IMG, {}),
    ("relu6", then(lambda m, y: F.relu6(y * 4.0)), IMG, {}),
    ("clip-minus0.5-0.7", then(lambda m, y: torch.clamp(y, -0.5, 0.7)), IMG, {"MAXIMUM": 1, "MINIMUM": 1}),
    ("leaky-relu", then(lambda m, y: F.leaky_relu(y, 0.1)), IMG, {"LEAKY_RELU": 1}),
    ("prelu-per-channel", then(lambda m, y: m.act(y), act=nn.PReLU(8)), IMG, {"PRELU": 1}),
    ("flatten-prelu-linear", then(lambda m, y: m.fc(m.act(y.flatten(1))), act=nn.PReLU(8 * 16 * 16), fc=nn.Linear(8 * 16 * 16, 5)),
     IMG, {"PRELU": 1, "GATHER": 0}),
    ("prelu-single", then(lambda m, y: m.act(y), act=nn.PReLU(1)), IMG, {"PRELU": 1}),
    ("sigmoid", then(lambda m, y: torch.sigmoid(y)), IMG, {"LOGISTIC": 1}),
    ("tanh", then(lambda m, y: torch.tanh(y)), IMG, {"TANH": 1}),
    ("hardsigmoid", then(lambda m, y: F.hardsigmoid(y * 3.0)), IMG, {}),
    ("hardswish", then(lambda m, y: F.hardswish(y * 3.0)), IMG, {"HARD_SWISH": 1}),
    ("silu-x-sigmoid-x", then(lambda m, y: y * torch.sigmoid(y)), IMG, {"LOGISTIC": 1, "MUL": 1}),
    ("silu-module", then(lambda m, y: F.silu(y)), IMG, {}),
    ("gelu-erf", then(lambda m, y: F.gelu(y)), IMG, {"GELU": 1, "DIV": 0}),
    ("gelu-tanh", then(lambda m, y: F.gelu(y, approximate="tanh")), IMG, {"TANH": 1}),
    ("reciprocal", then(lambda m, y: 1.0 / (y.abs() + 1.0)), IMG, {"DIV": 1}),
    # ---- softmax
    ("softmax-4d-channels", then(lambda m, y: torch.softmax(y, 1)), IMG, {"SOFTMAX": 1}),
    ("softmax-4d-last-axis", then(lambda m, y: torch.softmax(y, -1)), IMG, {}),
    ("softmax-2d", then(lambda m, y: torch.softmax(m.fc(y.mean((2, 3))), -1), fc=nn.Linear(8, 5)), IMG, {"SOFTMAX": 1}),
    ("log-softmax-channels", then(lambda m, y: torch.log_softmax(y, 1)), IMG, {"LOG_SOFTMAX": 1}),
    ("log-softmax-last-axis", then(lambda m, y: torch.log_softmax(y, -1)), IMG, {"LOG": 1}),
    ("spatial-softmax-view", then(lambda m, y: torch.softmax(y.view(1, 8, 256), -1).view(1, 8, 16, 16)), IMG, {"EXP": 1}),
    # ---- normalization
    ("layernorm-tokens", seq(nn.Linear(16, 16), nn.LayerNorm(16)), "1x8x16", {"RSQRT": 1}),
    ("layernorm-channels-last", then(lambda m, y: m.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), ln=nn.LayerNorm(8)), IMG,
     {"RSQRT": 1}),
    ("instance-norm", seq(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True)), IMG, {"RSQRT": 1}),
    ("l2-normalize-channels", then(lambda m, y: F.normalize(y, dim=1)), IMG, {"SQRT": 1}),
    # ---- pooling and reductions
    ("maxpool-k3-s2-p1", then(lambda m, y: F.max_pool2d(y, 3, 2, 1)), IMG, {"MAX_POOL_2D": 1}),
    ("maxpool-k2-s2", then(lambda m, y: F.max_pool2d(y, 2)), IMG, {"MAX_POOL_2D": 1}),
    ("maxpool-k3-s2-ceil", then(lambda m, y: F.max_pool2d(y, 3, 2, ceil_mode=True)), "1x3x17x17", {"MAX_POOL_2D": 1}),
    ("avgpool-k2-s2", then(lambda m, y: F.avg_pool2d(y, 2)), IMG, {"AVERAGE_POOL_2D": 1}),
    ("avgpool-k3-s1-p1-include-pad", then(lambda m, y: F.avg_pool2d(y, 3, 1, 1, count_include_pad=True)), IMG,
     {"AVERAGE_POOL_2D": 1}),
    ("avgpool-k3-s1-p1-exclude-pad", then(lambda m, y: F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)), IMG,
     {"AVERAGE_POOL_2D": 1}),
    ("avgpool-k3-s2-p1-ceil-exclude-pad", then(lambda m, y: F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
     IMG, {"AVERAGE_POOL_2D": 1, "MUL": 1}),
    ("avgpool-k2-s2-ceil-exclude-pad-odd", then(lambda m, y: F.avg_pool2d(y, 2, 2, ceil_mode=True, count_include_pad=False)),
     "1x3x15x15", {"AVERAGE_POOL_2D": 1}),
    ("avgpool-k3-s2-ceil-include-pad", then(lambda m, y: F.avg_pool2d(y, 3, 2, ceil_mode=True)), IMG,
     {"AVERAGE_POOL_2D": 1, "MUL": 1}),
    ("adaptive-avgpool1", then(lambda m, y: F.adaptive_avg_pool2d(y, 1)), IMG, {}),
    ("global-avgpool-module", then(lambda m, y: m.pool(y), pool=nn.AdaptiveAvgPool2d(1)), IMG, {}),
    ("mean-hw-keepdim", then(lambda m, y: y.mean((2, 3), keepdim=True)), IMG, {"MEAN": 1}),
    ("mean-hw", then(lambda m, y: y.mean((2, 3))), IMG, {"MEAN": 1}),
    ("amax-channels", then(lambda m, y: y.amax(1, keepdim=True)), IMG, {}),
    ("cbam-spatial-attention", then(lambda m, y: y * torch.sigmoid(m.c2(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1))),
                                    c2=nn.Conv2d(2, 1, 7, padding=3)), IMG, {"MEAN": 1, "REDUCE_MAX": 1}),
    # ---- data movement
    ("cat-channels", then(lambda m, y: torch.cat([y, m.b(y)], 1), b=nn.Conv2d(8, 4, 1)), IMG, {"CONCATENATION": 1}),
    ("split-channels", then(lambda m, y: torch.cat([s * (i + 1) for i, s in enumerate(torch.split(y, [3, 5], 1))][::-1], 1)),
     IMG, {}),
    ("chunk-channels-glu", then(lambda m, y: y.chunk(2, 1)[0] * torch.sigmoid(y.chunk(2, 1)[1])), IMG, {}),
    ("slice-channels-height", then(lambda m, y: y[:, 2:5, 1:-1]), IMG, {}),
    ("gather-channel-0", then(lambda m, y: y[:, 0]), IMG, {"GATHER": 1}),
    ("gather-row-3", then(lambda m, y: y[:, :, 3] * 2.0), IMG, {"GATHER": 1}),
    ("slice-step2", then(lambda m, y: y[:, :, ::2, 1::2]), IMG, {}),
    ("channel-shuffle", then(lambda m, y: y.view(1, 2, 4, 16, 16).transpose(1, 2).reshape(1, 8, 16, 16)), IMG, {"GATHER": 1}),
    ("squeeze-unsqueeze-se", then(lambda m, y: y * torch.sigmoid(m.fc(y.mean((2, 3)))).unsqueeze(-1).unsqueeze(-1),
                                  fc=nn.Linear(8, 8)), IMG, {}),
    ("pool-squeeze-linear", then(lambda m, y: m.fc(F.adaptive_avg_pool2d(y, 1).squeeze(-1).squeeze(-1)), fc=nn.Linear(8, 5)),
     IMG, {}),
    ("pad-constant", then(lambda m, y: F.pad(y, (1, 2, 0, 1))), IMG, {"PAD": 1}),
    ("pad-constant-value", then(lambda m, y: F.pad(y, (1, 1, 2, 0), value=0.5)), IMG, {"PADV2": 1}),
    ("pad-reflect", then(lambda m, y: F.pad(y, (2, 2, 1, 1), mode="reflect")), IMG, {"MIRROR_PAD": 1}),
    ("interpolate-nearest-x2", then(lambda m, y: F.interpolate(y, scale_factor=2, mode="nearest")), IMG,
     {"RESIZE_NEAREST_NEIGHBOR": 1}),
    ("interpolate-bilinear", then(lambda m, y: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)), IMG,
     {"RESIZE_BILINEAR": 1}),
    ("interpolate-bilinear-align-corners", then(lambda m, y: F.interpolate(y, size=(24, 20), mode="bilinear", align_corners=True)),
     IMG, {"RESIZE_BILINEAR": 1}),
    ("expand", then(lambda m, y: y + y.mean((1, 2, 3), keepdim=True).expand(1, 8, 16, 16)), IMG, {"BROADCAST_TO": 1}),
    ("channels-last-output", then(lambda m, y: y.permute(0, 2, 3, 1)), IMG, {}),
    ("identity-dropout", seq(nn.Conv2d(3, 8, 3), nn.Identity(), nn.Dropout(0.5)), IMG, {"CONV_2D": 1}),
]


# The default suite runs one case per family (each torch->ONNX->TFLite export costs seconds); the
# whole matrix runs with the heavy tests (`.ci/run` runs both). Single ONNX ops are covered fast in
# test_tflite_ops_onnx.py, built as ONNX graphs directly.
DEFAULT_OPS = {"conv-same-relu-fused", "conv-stride2-pad1-explicit-pad", "conv-depthwise", "conv-grouped2", "conv1d",
               "conv-transpose-s2-p1-op1", "matmul-two-activations-adj-y", "flatten-linear-permuted-weights",
               "add-two-branches", "hardswish", "gelu-tanh", "softmax-4d-channels", "layernorm-tokens",
               "avgpool-k3-s2-p1-ceil-exclude-pad", "chunk-channels-glu", "channel-shuffle", "pad-reflect",
               "interpolate-bilinear", "expand"}


@pytest.mark.parametrize("factory, shape, census", [
    pytest.param(f, s, c, id=i, marks=() if i in DEFAULT_OPS else pytest.mark.heavy) for i, f, s, c in OPS])
def test_op(factory, shape, census, tmp_path):
    torch.manual_seed(0)
    report = export(factory(), shape, tmp_path)
    census = {"TRANSPOSE": 0, **census}
    check(report, transposes=census.pop("TRANSPOSE"), **census)


# ---------------------------------------------------------------- inputs and outputs


@pytest.mark.parametrize("layers, shape, layout", [
    pytest.param(seq(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 5)), (1, 40), "NC", id="linear-1x40"),
    pytest.param(seq(nn.Conv1d(1, 8, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 18, 5)), (1, 1, 40), "NCW",
                 id="conv1d-1x1x40"),
])
def test_non_image_input_keeps_its_shape(layers, shape, layout, tmp_path):
    torch.manual_seed(0)
    report = export(layers(), "x".join(map(str, shape)), tmp_path)
    art = check(report)
    assert art["inputs"][0]["shape"] == list(shape) and art["inputs"][0]["layout"] == layout
    assert art["outputs"][0]["shape"] == [1, 5]


def test_signal_with_channels_is_nwc(tmp_path):
    """A (N, C, L) input read by a 1-D convolution is stored NWC, like images are NHWC."""
    torch.manual_seed(0)
    report = export(nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU()), "1x4x40", tmp_path)
    art = check(report)
    assert art["inputs"][0]["shape"] == [1, 40, 4] and art["inputs"][0]["layout"] == "NWC"
    assert art["outputs"][0]["shape"] == [1, 40, 8] and art["outputs"][0]["perm"] == [0, 2, 1]


class TwoHeads(nn.Module):
    """Two outputs of different ranks, returned late-first (the order must survive)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.head = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor):
        y = torch.relu(self.stem(x))
        return self.fc(y.mean((2, 3))), self.head(y)


def test_several_outputs_keep_their_order(tmp_path):
    torch.manual_seed(0)
    report = export(TwoHeads(), IMG, tmp_path, formats=("onnx", "tflite"))
    art = check(report)
    onnx_art = next(a for a in report["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    names = [o["name"] for o in art["outputs"]]
    assert names == [o["name"] for o in onnx_art["outputs"]] == ["output_0", "output_1"]
    assert [o["shape"] for o in art["outputs"]] == [[1, 5], [1, 8, 8, 4]]
    assert set(art["fidelity"]["per_output"]) == set(names)  # both outputs compared
    assert [o.name for o in onnx.load(str(tmp_path / onnx_art["path"])).graph.output] == names


class ConvAndInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor):
        return self.conv(x), x


def test_an_input_returned_as_output_is_copied_under_the_output_name(tmp_path):
    torch.manual_seed(0)
    art = check(export(ConvAndInput(), IMG, tmp_path), RESHAPE=1)  # the copy: same data, its own tensor
    assert [(o["name"], o["shape"]) for o in art["outputs"]] == [("output_0", [1, 16, 16, 8]), ("output_1", [1, 16, 16, 3])]


def test_nchw_input_costs_one_transpose_per_4d_end(tmp_path):
    torch.manual_seed(0)
    report = export(TwoHeads(), IMG, tmp_path, tflite_nchw_input=True)
    art = check(report, transposes=2)  # the input and the 4-D output; the 2-D output needs none
    assert art["inputs"][0]["layout"] == "NCHW" and art["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert art["outputs"][1]["layout"] == "NCHW" and art["outputs"][1]["shape"] == [1, 4, 8, 8]


# ---------------------------------------------------------------- unsupported ops


UNSUPPORTED = [
    pytest.param(then(lambda m, y: torch.cumsum(y, 1)), "CumSum node 'node_cumsum' has no TFLite lowering", id="cumsum"),
    # (an antialiased downscale is lowered now: ops_resize.py)
    # (GridSample with a constant grid is lowered now: ops_resize.py; a grid computed at run time is not)
    pytest.param(then(lambda m, y: F.grid_sample(y, y[:, :2].permute(0, 2, 3, 1).tanh(), align_corners=False)),
                 "GridSample node", id="grid-sample"),
]


@pytest.mark.parametrize("factory, message", UNSUPPORTED)
def test_unsupported_op_fails_the_tflite_artifact_only_with_exit_4(factory, message, tmp_path):
    torch.manual_seed(0)
    report = export(factory(), IMG, tmp_path, formats=("onnx", "tflite"))
    by = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert by["onnx", "fp32"]["ok"] and by["onnx", "fp16"]["ok"]
    for precision in ("fp32", "fp16"):
        art = by["tflite", precision]
        assert not art["ok"] and art["exit_code"] == 4
        assert f"TFLite export: {message}" in art["error"] and art["error"].endswith("use --format onnx for this model")
    assert report["exit_code"] == 4 and not report["ok"]


def _resize_onnx(path, coord: str, nearest_mode: str, size: list[int]):
    from onnx import TensorProto, helper

    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", coordinate_transformation_mode=coord,
                            nearest_mode=nearest_mode)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, *size])],
                              [helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 2, *size])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


@pytest.mark.parametrize("coord, nearest_mode, supported", [
    ("asymmetric", "floor", True), ("half_pixel", "round_prefer_ceil", True), ("tf_half_pixel_for_nn", "floor", True),
    ("align_corners", "round_prefer_ceil", True),
    # TFLite has no builtin rounding that matches these for every size (ONNX Runtime is the reference here):
    ("half_pixel", "floor", False), ("align_corners", "round_prefer_floor", False), ("asymmetric", "round_prefer_ceil", False),
])
@pytest.mark.parametrize("size", [[12, 12], [9, 9], [3, 3]], ids=lambda s: "x".join(map(str, s)))
def test_nearest_resize_modes_from_onnx(coord, nearest_mode, supported, size, tmp_path):
    model = _resize_onnx(tmp_path / "resize.onnx", coord, nearest_mode, size)
    art = edgepack.export(model, output_dir=tmp_path / "out", formats=("tflite",))["artifacts"][0]
    if supported:
        assert art["ok"], art["error"]
        assert art["fidelity"]["max_abs_error"] == 0.0 and art["op_census"] == {"RESIZE_NEAREST_NEIGHBOR": 1}
    else:  # no TFLite builtin rounds like these: one GATHER per spatial axis (ops_resize.py), exact
        assert art["ok"], art["error"]
        assert art["fidelity"]["max_abs_error"] == 0.0 and art["op_census"] == {"GATHER": 2}


# ---------------------------------------------------------------- whole models


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act] if act is not None else []))


class SmallResNet(nn.Module):
    """ResNet-18-style: stem, max pool, basic blocks (two with a strided 1x1 downsample), pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 1, act=nn.ReLU()), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1), BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels and transforms one half; stride 2 runs
    two branches on the whole input; both concatenate and shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride == 2:
            self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin), conv_bn(cin, half, 1, act=nn.ReLU()))
        inner = cin if stride == 2 else half
        self.right = nn.Sequential(conv_bn(inner, half, 1, act=nn.ReLU()), conv_bn(half, half, 3, stride, groups=half),
                                   conv_bn(half, half, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, 1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out)


class ShuffleNetV2Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3, 2, act=nn.ReLU()), nn.MaxPool2d(3, 2, 1))
        self.units = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 48, 1),
                                   ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1))
        self.head = conv_bn(96, 128, 1, act=nn.ReLU())
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.units(self.stem(x))).mean((2, 3)))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1)


class SqueezeNetTiny(nn.Module):
    """SqueezeNet 1.1 layout: ceil-mode max pools between fire modules, a conv classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 8, 16), Fire(32, 8, 16),
            nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 16, 32), Fire(64, 16, 32))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class MBConv(nn.Module):
    """Inverted residual with squeeze-and-excitation (EfficientNet: SiLU + sigmoid gate;
    MobileNetV3: Hardswish + ReLU / Hardsigmoid gate)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, act: type[nn.Module],
                 se_act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            *([conv_bn(cin, hidden, 1, act=act())] if expand != 1 else []),
            conv_bn(hidden, hidden, k, stride, groups=hidden, act=act()),
            SqueezeExcite(hidden, max(4, cin // 4), se_act, gate),
            conv_bn(hidden, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MBConvNet(nn.Module):
    def __init__(self, act: type[nn.Module], se_act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        block = lambda *a: MBConv(*a, act=act, se_act=se_act, gate=gate)  # noqa: E731
        self.features = nn.Sequential(conv_bn(3, 16, 3, 2, act=act()), block(16, 16, 1, 3, 1), block(16, 24, 4, 3, 2),
                                      block(24, 24, 4, 5, 1), conv_bn(24, 64, 1, act=act()))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class TinyDetector(nn.Module):
    """Three outputs from different scales: YOLO-style (1, N, 6) predictions gathered from an FPN
    (lateral 1x1 convs, nearest upsampling, add and concat), a 4-D objectness map, and class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.c3, self.c4, self.c5 = conv_bn(3, 16, 3, 2, act=nn.ReLU()), conv_bn(16, 32, 3, 2, act=nn.ReLU()), conv_bn(32, 64, 3, 2, act=nn.ReLU())
        self.lat3, self.lat4, self.lat5 = nn.Conv2d(16, 16, 1), nn.Conv2d(32, 16, 1), nn.Conv2d(64, 16, 1)
        self.smooth3 = conv_bn(32, 16, 3, act=nn.SiLU())
        self.heads = nn.ModuleList(nn.Conv2d(16, 6, 1) for _ in range(3))
        self.objectness = nn.Conv2d(16, 1, 3, padding=1)
        self.cls = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor):
        c3 = self.c3(x)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p5 = self.lat5(c5)
        p4 = self.lat4(c4) + F.interpolate(p5, scale_factor=2, mode="nearest")
        p3 = self.smooth3(torch.cat([self.lat3(c3), F.interpolate(p4, scale_factor=2, mode="bilinear")], 1))
        preds = torch.cat([h(p).permute(0, 2, 3, 1).reshape(1, -1, 6) for h, p in zip(self.heads, (p3, p4, p5))], 1)
        return preds, torch.sigmoid(self.objectness(p3)), self.cls(c5.mean((2, 3)))


MODELS = [
    pytest.param(lambda: MobileNetV2(num_classes=10, width=0.35), "1x3x64x64", {"DEPTHWISE_CONV_2D": 17}, None,
                 id="mobilenetv2-0.35"),
    pytest.param(SmallResNet, "1x3x32x32", {"MAX_POOL_2D": 1}, None, id="resnet18-style", marks=pytest.mark.heavy),
    pytest.param(ShuffleNetV2Tiny, "1x3x64x64", {"GATHER": 5, "SPLIT": 3}, None, id="shufflenetv2-units", marks=pytest.mark.heavy),
    pytest.param(SqueezeNetTiny, "1x3x66x66", {"MAX_POOL_2D": 2, "CONCATENATION": 4}, None, id="squeezenet-fire", marks=pytest.mark.heavy),
    pytest.param(lambda: MBConvNet(nn.SiLU, nn.SiLU, nn.Sigmoid), "1x3x64x64", {"LOGISTIC": 13, "MUL": 13}, None,
                 id="efficientnet-mbconv-se", marks=pytest.mark.heavy),
    pytest.param(lambda: MBConvNet(nn.Hardswish, nn.ReLU, nn.Hardsigmoid), "1x3x64x64", {"HARD_SWISH": 7}, None,
                 id="mobilenetv3-hardswish-se"),
    pytest.param(TinyDetector, "1x3x64x64", {"RESIZE_NEAREST_NEIGHBOR": 1, "RESIZE_BILINEAR": 1},
                 [[1, 32 * 32 + 16 * 16 + 8 * 8, 6], [1, 32, 32, 1], [1, 10]], id="fpn-detector-3-outputs",
                 marks=pytest.mark.heavy),
    pytest.param(lambda: MobileNetV2(num_classes=1000), "1x3x224x224", {"DEPTHWISE_CONV_2D": 17}, None,
                 id="mobilenetv2-1.0-224", marks=pytest.mark.heavy),
]


@pytest.mark.parametrize("factory, shape, census, outputs", MODELS)
def test_model(factory, shape, census, outputs, tmp_path):
    torch.manual_seed(0)
    report = export(factory(), shape, tmp_path)
    art = check(report, transposes=0, **census)
    if outputs is not None:
        assert [o["shape"] for o in art["outputs"]] == outputs
        assert [o["name"] for o in art["outputs"]] == [f"output_{i}" for i in range(len(outputs))]
