"""remove_pruned_channels: every case asserts structure (channel counts before and after, read off
the weight initializers and `result.details`, op counts, the `skipped` reasons) and numerics against
PyTorch eager with an explicit tolerance.

Models are small (8-32 channels, 1x3x16x16 inputs), exported with the TorchScript exporter and run
through the pipeline's graph passes (cleanup, BatchNorm folding, cleanup) before the pass, as the
pipeline does. Pruned channels are made by zeroing whole output filters; the constant a dead
channel then holds is set on purpose through its BatchNorm (beta, with mean 0) or its conv bias:
-1 becomes exactly 0 after ReLU, +0.5 stays non-zero. Every other BatchNorm gets random statistics,
so a wrong fold or a wrong bias correction shows in the numbers."""
from __future__ import annotations

import io
import time
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from edgepack.converters.cleanup_graph import cleanup_graph
from edgepack.converters.fold_batchnorm import fold_batchnorm
from edgepack.converters.remove_pruned_channels import remove_pruned_channels

torch = pytest.importorskip("torch", reason="models are defined and exported with PyTorch")
nn = torch.nn
F = nn.functional
prune = pytest.importorskip("torch.nn.utils.prune")

# Exact mode: max abs error / max abs reference, fp32 reassociation only.
EXACT = 1e-5
ZERO = -1.0  # pre-activation constant of a dead channel that ReLU turns into exactly 0
NONZERO = 0.5  # pre-activation constant that stays non-zero after ReLU / ReLU6


# ---------------------------------------------------------------- helpers


def export(model: nn.Module, shape: tuple[int, ...] = (1, 3, 16, 16), dynamic_batch: bool = False) -> ir.Model:
    buf = io.BytesIO()
    dynamic_axes = {"x": {0: "N"}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), (torch.zeros(shape),), buf, dynamo=False, opset_version=17, input_names=["x"],
            dynamic_axes=dynamic_axes,
        )
    onnx_model = ir.from_proto(onnx.load_from_string(buf.getvalue()))
    cleanup_graph(onnx_model)
    fold_batchnorm(onnx_model)
    cleanup_graph(onnx_model)
    return onnx_model


def slim(model: nn.Module, shape: tuple[int, ...] = (1, 3, 16, 16), dynamic_batch: bool = False, **options):
    """Export as the pipeline does, remove pruned channels, clean up: (onnx_ir model, PassResult)."""
    onnx_model = export(model, shape, dynamic_batch)
    result = remove_pruned_channels(onnx_model, **options)
    cleanup_graph(onnx_model)
    return onnx_model, result


def rel_error(model: nn.Module, onnx_model: ir.Model, shape: tuple[int, ...] = (1, 3, 16, 16), n: int = 4) -> float:
    """max |ORT - PyTorch| / max |PyTorch| over n seeded N(0,1) inputs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        ir.to_proto(onnx_model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    g = torch.Generator().manual_seed(1234)
    err = ref_max = 0.0
    for _ in range(n):
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            ref = model.eval()(x).numpy()
        out = session.run(None, {"x": x.numpy()})[0]
        assert out.shape == ref.shape
        err = max(err, float(np.abs(out - ref).max()))
        ref_max = max(ref_max, float(np.abs(ref).max()))
    return err / ref_max


def node(onnx_model: ir.Model, name: str) -> ir.Node:
    matches = [n for n in onnx_model.graph if n.name == name]
    assert len(matches) == 1, f"{name!r} not in {[n.name for n in onnx_model.graph]}"
    return matches[0]


def weight(onnx_model: ir.Model, name: str) -> tuple[int, ...]:
    """Shape of a Conv/Gemm node's weight initializer."""
    return tuple(node(onnx_model, name).inputs[1].const_value.shape)


def channels(onnx_model: ir.Model, name: str) -> tuple[int, int]:
    """(input channels, output channels) of a Conv (full input width, also for depthwise), ConvTranspose
    or Gemm/MatMul."""
    n = node(onnx_model, name)
    w = weight(onnx_model, name)
    if n.op_type in ("Gemm", "MatMul"):
        return (w[1], w[0]) if n.attributes.get_int("transB", 0) else (w[0], w[1])
    if n.op_type == "ConvTranspose":
        return w[0], w[1] * n.attributes.get_int("group", 1)
    return w[1] * n.attributes.get_int("group", 1), w[0]


def ops(onnx_model: ir.Model) -> Counter:
    return Counter(n.op_type for n in onnx_model.graph)


def details(result) -> dict[str, tuple[int, int]]:
    return {d["layer"]: (d["channels_before"], d["channels_after"]) for d in result.details}


def reasons(result) -> str:
    return " | ".join(s["why"] for s in result.skipped)


def kill(conv: nn.Conv2d | nn.Linear, idx: list[int], bn: nn.BatchNorm2d | None = None, const: float = ZERO) -> None:
    """Zero whole output filters; their pre-activation output becomes `const` (BN beta with mean 0, or bias)."""
    with torch.no_grad():
        conv.weight[idx] = 0.0
        if bn is not None:
            if conv.bias is not None:
                conv.bias[idx] = 0.0
            bn.running_mean[idx] = 0.0
            bn.bias[idx] = const
        else:
            conv.bias[idx] = const


def random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Head(nn.Module):
    """Global average pool + Linear: the usual classifier, a channel-mixing consumer without padding."""

    def __init__(self, c: int, classes: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------- 1. ResNet basic block


class BasicNet(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(3, c, 3)
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.head(torch.relu(x + y))


def basic_net(const: float) -> BasicNet:
    torch.manual_seed(0)
    model = random_bn(BasicNet())
    kill(model.conv1, [1, 4, 7], model.bn1, const)
    return model


def test_basic_block_zero_constant_removed_through_padded_conv():
    model = basic_net(ZERO)
    onnx_model, result = slim(model)
    assert channels(onnx_model, "/conv1/Conv") == (16, 13)
    assert channels(onnx_model, "/conv2/Conv") == (13, 16)
    assert details(result) == {"/conv1/Conv": (16, 13)}
    assert result.counts["channels_removed"] == 3 and result.modified
    assert result.counts["macs_after"] < result.counts["macs_before"]
    assert result.counts["params_after"] == result.counts["params_before"] - 3 * (16 * 9 + 1) - 3 * 16 * 9
    assert rel_error(model, onnx_model) <= EXACT


def test_basic_block_nonzero_constant_kept_before_padded_conv_unless_approx():
    model = basic_net(NONZERO)
    onnx_model, result = slim(model)
    assert channels(onnx_model, "/conv1/Conv") == (16, 16)
    assert result.counts["channels_removed"] == 0 and not result.modified
    kept = [s for s in result.skipped if s["node"] == "/conv1/Conv"]
    assert len(kept) == 1 and kept[0]["channels"] == [1, 4, 7]
    assert "zero-padded" in kept[0]["why"] and "/conv2/Conv" in kept[0]["why"]
    # Whole dead filters that stay are explained above, not reported as scattered sparsity.
    assert result.extra["sparsity"] == [] and result.extra["hint"] is None
    assert rel_error(model, onnx_model) <= EXACT

    onnx_model, result = slim(model, approx=True)
    assert channels(onnx_model, "/conv1/Conv") == (16, 13)
    assert channels(onnx_model, "/conv2/Conv") == (13, 16)
    assert result.counts["approx"] == 1 and result.counts["channels_removed"] == 3
    error = rel_error(model, onnx_model)
    assert EXACT < error < 0.05  # only the border pixels of conv2 differ (about 2.5e-3 here)


# ---------------------------------------------------------------- 2. ResNet bottleneck


class Bottleneck(nn.Module):
    def __init__(self, c: int = 32, width: int = 8) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(x + self.bn3(self.conv3(y)))


class BottleneckNet(nn.Module):
    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.stem_conv, self.stem_bn = nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.a, self.b = Bottleneck(c), Bottleneck(c)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem_conv(x)))
        return self.head(self.b(self.a(x)))


def bottleneck_net() -> BottleneckNet:
    torch.manual_seed(1)
    return random_bn(BottleneckNet())


def test_bottleneck_nonzero_constant_before_1x1_removed_exactly():
    model = bottleneck_net()
    kill(model.a.conv2, [0, 3, 5], model.a.bn2, NONZERO)
    onnx_model, result = slim(model)
    assert channels(onnx_model, "/a/conv2/Conv") == (8, 5)
    assert channels(onnx_model, "/a/conv3/Conv") == (5, 32)
    assert details(result) == {"/a/conv2/Conv": (8, 5)}
    assert result.skipped == []
    assert rel_error(model, onnx_model) <= EXACT


def test_bottleneck_conv3_alone_is_held_by_the_identity_branch():
    model = bottleneck_net()
    kill(model.a.conv3, [2, 9], model.a.bn3, NONZERO)
    onnx_model, result = slim(model)
    assert result.counts["channels_removed"] == 0 and result.details == []
    assert channels(onnx_model, "/a/conv3/Conv") == (8, 32)
    assert channels(onnx_model, "/b/conv1/Conv") == (32, 8)
    assert rel_error(model, onnx_model) <= EXACT


def test_bottleneck_residual_chain_pruned_in_every_member_is_removed():
    model = bottleneck_net()
    dead = [2, 9, 30]
    kill(model.stem_conv, dead, model.stem_bn, NONZERO)  # every consumer of the chain is 1x1 or Linear
    kill(model.a.conv3, dead, model.a.bn3, -0.25)
    kill(model.b.conv3, dead, model.b.bn3, NONZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/stem_conv/Conv": (32, 29), "/a/conv3/Conv": (32, 29), "/b/conv3/Conv": (32, 29)}
    assert channels(onnx_model, "/a/conv1/Conv") == (29, 8)
    assert channels(onnx_model, "/b/conv1/Conv") == (29, 8)
    assert channels(onnx_model, "/head/fc/Gemm") == (29, 5)
    assert result.counts["channels_removed"] == 9
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 3. MobileNetV2 inverted residual


class InvertedResidualNet(nn.Module):
    def __init__(self, c: int = 8, expand: int = 4) -> None:
        super().__init__()
        hidden = c * expand
        self.stem = conv_bn(3, c, 3)
        self.expand, self.expand_bn = nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.dw, self.dw_bn = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden)
        self.project = conv_bn(hidden, c, 1)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(x))
        y = F.relu6(self.expand_bn(self.expand(x)))
        y = F.relu6(self.dw_bn(self.dw(y)))
        return self.head(x + self.project(y))


def inverted_residual_net() -> InvertedResidualNet:
    torch.manual_seed(2)
    return random_bn(InvertedResidualNet())


def test_inverted_residual_depthwise_filters_remove_the_channel_from_expand_and_project():
    model = inverted_residual_net()
    kill(model.dw, [3, 10, 31], model.dw_bn, NONZERO)
    onnx_model, result = slim(model)
    assert channels(onnx_model, "/expand/Conv") == (8, 29)  # its output only fed the dead dw filters
    assert channels(onnx_model, "/dw/Conv") == (29, 29)
    assert node(onnx_model, "/dw/Conv").attributes.get_int("group") == 29
    assert channels(onnx_model, "/project/project.0/Conv") == (29, 8)
    assert details(result) == {"/expand/Conv": (32, 29), "/dw/Conv": (32, 29)}
    assert rel_error(model, onnx_model) <= EXACT


def test_inverted_residual_expand_filters_zero_constant_removed_through_padded_depthwise():
    model = inverted_residual_net()
    kill(model.expand, [0, 7], model.expand_bn, ZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/expand/Conv": (32, 30), "/dw/Conv": (32, 30)}
    assert channels(onnx_model, "/project/project.0/Conv") == (30, 8)
    assert rel_error(model, onnx_model) <= EXACT


def test_inverted_residual_expand_filters_nonzero_constant_kept_before_padded_depthwise():
    model = inverted_residual_net()
    kill(model.expand, [0, 7], model.expand_bn, NONZERO)
    onnx_model, result = slim(model)
    assert result.details == [] and channels(onnx_model, "/dw/Conv") == (32, 32)
    kept = [s for s in result.skipped if s["node"] == "/expand/Conv"]
    assert len(kept) == 1 and kept[0]["channels"] == [0, 7]
    assert "zero-padded depthwise" in kept[0]["why"] and "/dw/Conv" in kept[0]["why"]
    assert rel_error(model, onnx_model) <= EXACT

    with torch.no_grad():  # keep the depthwise output of these channels inside ReLU6's linear range,
        model.dw_bn.running_mean[[0, 7]] = 0.0  # so the border error is not clipped away
        model.dw_bn.bias[[0, 7]] = 3.0
    onnx_model, result = slim(model, approx=True)
    assert details(result) == {"/expand/Conv": (32, 30), "/dw/Conv": (32, 30)}
    assert channels(onnx_model, "/project/project.0/Conv") == (30, 8)
    assert EXACT < rel_error(model, onnx_model) < 0.05


# ---------------------------------------------------------------- 4. ShuffleNetV2 units


class ShuffleUnit(nn.Module):
    """Stride-1 ShuffleNetV2 unit: split, branch (1x1, dw 3x3, 1x1), concat, channel shuffle."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        h = c // 2
        self.pw1, self.bn1 = nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h)
        self.dw, self.bn2 = nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h)
        self.pw2, self.bn3 = nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        b = torch.relu(self.bn1(self.pw1(b)))
        b = self.bn2(self.dw(b))
        b = torch.relu(self.bn3(self.pw2(b)))
        y = torch.cat([a, b], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(3, c, 3)
        self.u1, self.u2 = ShuffleUnit(c), ShuffleUnit(c)
        self.head = Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.u2(self.u1(torch.relu(self.stem(x)))))


def test_shufflenet_units_pruned_branch_output_shuffle_becomes_gather():
    torch.manual_seed(3)
    model = random_bn(ShuffleNet())
    plain = export(model)
    assert ops(plain)["Reshape"] == 4 and ops(plain)["Transpose"] == 2 and ops(plain)["Gather"] == 0
    kill(model.u1.pw2, [1, 6], model.u1.bn3, NONZERO)
    onnx_model, result = slim(model)
    # Concat position 8+1 -> shuffled 3 (u2's identity half), 8+6 -> shuffled 13 (u2's branch input 5):
    # u2 concatenates 7 identity channels with its 8 branch outputs, and shuffles 15 channels.
    assert details(result) == {"/u1/pw2/Conv": (8, 6)}
    assert channels(onnx_model, "/u2/pw1/Conv") == (7, 8)
    assert channels(onnx_model, "/head/fc/Gemm") == (15, 5)
    assert result.counts["channels_removed"] == 2
    counts = ops(onnx_model)
    assert counts["Gather"] == 2 and counts["Reshape"] == 0 and counts["Transpose"] == 0
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 5. SqueezeNet fire modules


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1(s)), torch.relu(self.expand3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.fire1, self.fire2 = Fire(16, 8, 16), Fire(32, 8, 16)
        self.head = Head(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fire2(self.fire1(torch.relu(self.stem(x)))))


def test_squeezenet_pruned_expand_filters_are_removed_from_the_concat():
    torch.manual_seed(4)
    model = SqueezeNet().eval()
    kill(model.fire1.expand1, [0, 5], const=NONZERO)
    kill(model.fire1.expand3, [2], const=ZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/fire1/expand1/Conv": (16, 14), "/fire1/expand3/Conv": (16, 15)}
    assert channels(onnx_model, "/fire2/squeeze/Conv") == (29, 8)
    assert rel_error(model, onnx_model) <= EXACT


def test_squeezenet_pruned_squeeze_zero_constant_removed_through_both_expands():
    torch.manual_seed(4)
    model = SqueezeNet().eval()
    kill(model.fire2.squeeze, [1, 4], const=ZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/fire2/squeeze/Conv": (8, 6)}
    assert channels(onnx_model, "/fire2/expand1/Conv") == (6, 16)
    assert channels(onnx_model, "/fire2/expand3/Conv") == (6, 16)
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 6. DenseNet-style concat chain


class DenseNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(c, c, 1), nn.Conv2d(2 * c, c, 1), nn.Conv2d(3 * c, c, 1)
        self.head = Head(4 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = torch.relu(self.stem(x))
        x1 = torch.relu(self.conv1(x0))
        x2 = torch.relu(self.conv2(torch.cat([x0, x1], 1)))
        x3 = torch.relu(self.conv3(torch.cat([x0, x1, x2], 1)))
        return self.head(torch.cat([x0, x1, x2, x3], 1))


def test_densenet_concat_chain_pruned_filters_removed_from_every_concat():
    torch.manual_seed(5)
    model = DenseNet().eval()
    kill(model.conv1, [1, 2, 6], const=NONZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/conv1/Conv": (8, 5)}
    assert channels(onnx_model, "/conv2/Conv") == (13, 8)
    assert channels(onnx_model, "/conv3/Conv") == (21, 8)
    assert channels(onnx_model, "/head/fc/Gemm") == (29, 5)
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 7. Linear after pooling / Flatten


class PoolLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)  # 16x16 -> 4x4
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_linear_after_global_pool():
    torch.manual_seed(6)
    model = PoolLinear().eval()
    kill(model.conv, [0, 3], const=NONZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/conv/Conv": (16, 14)}
    assert channels(onnx_model, "/head/fc/Gemm") == (14, 5)
    assert rel_error(model, onnx_model) <= EXACT


def test_linear_after_flatten_drops_hxw_features_per_channel():
    torch.manual_seed(6)
    model = FlattenLinear().eval()
    kill(model.conv, [2, 5], const=NONZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/conv/Conv": (8, 6)}
    assert channels(onnx_model, "/fc/Gemm") == (128 - 2 * 16, 5)
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 8. grouped conv


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 1, groups=2)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.grouped(torch.relu(self.conv(x)))))


def test_grouped_conv_blocks_removal_and_says_why():
    torch.manual_seed(7)
    model = GroupedNet().eval()
    kill(model.conv, [1, 9], const=ZERO)
    kill(model.grouped, [4], const=NONZERO)
    onnx_model, result = slim(model)
    assert result.counts["channels_removed"] == 0 and result.details == []
    assert channels(onnx_model, "/conv/Conv") == (3, 16)
    assert channels(onnx_model, "/grouped/Conv") == (16, 16)
    assert channels(onnx_model, "/head/fc/Gemm") == (16, 5)
    kept = {s["node"]: s for s in result.skipped}
    assert kept["/conv/Conv"]["channels"] == [1, 9] and "grouped" in kept["/conv/Conv"]["why"]
    assert kept["/grouped/Conv"]["channels"] == [4] and "grouped" in kept["/grouped/Conv"]["why"]
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 9. squeeze-and-excitation


class SENet(nn.Module):
    def __init__(self, linear: bool, c: int = 16) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.linear = linear
        if linear:
            self.se1, self.se2 = nn.Linear(c, 4), nn.Linear(4, c)
        else:
            self.se1, self.se2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.out = nn.Conv2d(c, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        s = F.adaptive_avg_pool2d(x, 1)
        if self.linear:
            s = torch.sigmoid(self.se2(torch.relu(self.se1(s.flatten(1))))).view(x.shape[0], -1, 1, 1)
        else:
            s = torch.sigmoid(self.se2(torch.relu(self.se1(s))))
        return self.head(torch.relu(self.out(x * s)))


@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
def test_squeeze_excitation_zero_channels_removed_with_se_weights(linear):
    torch.manual_seed(8)
    model = random_bn(SENet(linear))
    kill(model.conv, [2, 7, 11], model.bn, ZERO)
    onnx_model, result = slim(model)
    op = "Gemm" if linear else "Conv"
    assert details(result) == {"/conv/Conv": (16, 13), f"/se2/{op}": (16, 13)}
    assert channels(onnx_model, f"/se1/{op}") == (13, 4)
    assert channels(onnx_model, f"/se2/{op}") == (4, 13)
    assert channels(onnx_model, "/out/Conv") == (13, 8)
    assert rel_error(model, onnx_model) <= EXACT


def test_squeeze_excitation_nonzero_channels_kept():
    torch.manual_seed(8)
    model = random_bn(SENet(False))
    kill(model.conv, [2, 7, 11], model.bn, NONZERO)  # x * s varies with s
    onnx_model, result = slim(model)
    assert result.details == [] and channels(onnx_model, "/out/Conv") == (16, 8)
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 10. slimmed BatchNorm


class SlimBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.pw(torch.relu(self.bn(self.conv(x))))))


def test_slimmed_batchnorm_gamma_zero_removed_exactly():
    torch.manual_seed(9)
    model = random_bn(SlimBNNet())
    with torch.no_grad():
        model.bn.weight[[4, 9]] = 0.0  # network slimming: gamma 0, beta (and the mean) non-zero
        model.bn.bias[[4, 9]] = torch.tensor([0.7, 1.3])
    onnx_model, result = slim(model)
    assert details(result) == {"/conv/Conv": (16, 14)}
    assert channels(onnx_model, "/pw/Conv") == (14, 8)
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 11. graph output


class OutputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.last = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.relu(self.conv(x)))


def test_graph_output_channels_never_removed():
    torch.manual_seed(10)
    model = OutputNet().eval()
    kill(model.last, [1, 3], const=NONZERO)
    onnx_model, result = slim(model)
    assert result.counts["channels_removed"] == 0
    assert channels(onnx_model, "/last/Conv") == (8, 8)
    assert list(onnx_model.graph.outputs[0].shape) == [1, 8, 16, 16]
    kept = [s for s in result.skipped if s["node"] == "/last/Conv"]
    assert kept and kept[0]["channels"] == [1, 3] and "graph output" in kept[0]["why"]
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 12. --round-channels


def test_round_channels_keeps_width_a_multiple():
    torch.manual_seed(11)
    model = random_bn(SlimBNNet())
    dead = [0, 3, 6, 10, 15]
    kill(model.conv, dead, model.bn, NONZERO)
    onnx_model, result = slim(model, round_channels=4)
    assert details(result) == {"/conv/Conv": (16, 12)}
    assert channels(onnx_model, "/pw/Conv") == (12, 8)
    kept = [s for s in result.skipped if s["node"] == "/conv/Conv"]
    assert len(kept) == 1 and len(kept[0]["channels"]) == 1 and kept[0]["channels"][0] in dead
    assert "--round-channels" in kept[0]["why"]
    assert result.counts["round_channels"] == 4
    assert rel_error(model, onnx_model) <= EXACT


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_round_channels_must_be_a_positive_integer(bad):
    from edgepack.errors import UsageError

    onnx_model = export(SlimBNNet().eval())
    with pytest.raises(UsageError, match="round_channels"):
        remove_pruned_channels(onnx_model, round_channels=bad)


# ---------------------------------------------------------------- 13. unstructured sparsity


def test_scattered_zeros_remove_nothing_and_report_sparsity():
    torch.manual_seed(12)
    model = random_bn(SlimBNNet())
    prune.l1_unstructured(model.conv, "weight", amount=0.5)
    prune.remove(model.conv, "weight")
    assert not (model.conv.weight.flatten(1) == 0).all(1).any()  # no whole filter happened to die
    onnx_model, result = slim(model)
    assert result.counts["channels_removed"] == 0 and not result.modified
    sparsity = {row["layer"]: row["zero_fraction"] for row in result.extra["sparsity"]}
    assert sparsity["/conv/Conv"] == pytest.approx(0.5, abs=0.01)
    assert "structured" in result.extra["hint"]
    assert rel_error(model, onnx_model) <= EXACT


# ---------------------------------------------------------------- 14. ResNet-50-sized graph


@pytest.mark.heavy
def test_resnet50_half_of_every_bottleneck_conv2_removed(record_property):
    from benchmarks.zoo import ResNet50, randomize_batchnorm

    torch.manual_seed(13)
    model = randomize_batchnorm(ResNet50())
    macs: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _, out, name=name: macs.__setitem__(
            name, out.numel() * mod.weight[0].numel()))
        for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    widths = {}
    for name, m in model.layers.named_children():
        prune.ln_structured(m.conv2, "weight", amount=0.5, n=1, dim=0)
        prune.remove(m.conv2, "weight")
        widths[name] = m.conv2.out_channels
    onnx_model = export(model, (1, 3, 224, 224))
    start = time.perf_counter()
    result = remove_pruned_channels(onnx_model)
    record_property("remove_pruned_channels_seconds", round(time.perf_counter() - start, 3))
    cleanup_graph(onnx_model)

    assert result.counts["channels_removed"] == sum(widths.values()) // 2 == 1888
    assert result.counts["layers_slimmed"] == 16
    for name, width in widths.items():
        assert channels(onnx_model, f"/layers/layers.{name}/conv2/Conv")[1] == width // 2
        assert channels(onnx_model, f"/layers/layers.{name}/conv3/Conv")[0] == width // 2
    # conv2 keeps half its outputs and conv3 half its inputs; nothing else changes.
    saved = sum(macs[f"layers.{n}.conv2"] // 2 + macs[f"layers.{n}.conv3"] // 2 for n in widths)
    assert result.counts["macs_before"] == sum(macs.values())
    assert result.counts["macs_after"] == result.counts["macs_before"] - saved
    assert 0.6 < result.counts["macs_after"] / result.counts["macs_before"] < 0.75
    assert rel_error(model, onnx_model, (1, 3, 224, 224)) <= EXACT


# ---------------------------------------------------------------- regressions (bugs fixed in the pass)


def test_all_filters_dead_keeps_one_channel():
    torch.manual_seed(14)
    model = PoolLinear().eval()
    kill(model.conv, list(range(16)), const=NONZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/conv/Conv": (16, 1)}  # a 0-channel tensor is not a valid model
    assert channels(onnx_model, "/head/fc/Gemm") == (1, 5)
    kept = [s for s in result.skipped if s["node"] == "/conv/Conv"]
    assert kept[0]["channels"] == [0] and "every channel" in kept[0]["why"]
    assert rel_error(model, onnx_model) <= EXACT


class ClampNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(torch.clamp(self.conv(x), min=x.mean())))  # Clip with a computed bound


def test_clip_with_a_computed_bound_is_not_constant():
    torch.manual_seed(15)
    model = ClampNet().eval()
    kill(model.conv, [1, 2], const=ZERO)
    onnx_model, result = slim(model)
    assert ops(onnx_model)["Clip"] == 1
    assert result.details == [] and channels(onnx_model, "/pw/Conv") == (8, 8)
    assert rel_error(model, onnx_model) <= EXACT


class ResizeNet(nn.Module):
    def __init__(self, size: bool) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        y = F.interpolate(y, size=(24, 24)) if self.size else F.interpolate(y, scale_factor=2.0, mode="bilinear")
        return self.head(self.pw(y))


@pytest.mark.parametrize("size", [True, False], ids=["sizes", "scales"])
def test_resize_by_sizes_or_scales(size):
    torch.manual_seed(16)
    model = ResizeNet(size).eval()
    kill(model.conv, [1, 2], const=NONZERO)
    onnx_model, result = slim(model)
    assert ops(onnx_model)["Resize"] == 1
    assert details(result) == {"/conv/Conv": (8, 6)}
    assert channels(onnx_model, "/pw/Conv") == (6, 8)
    assert rel_error(model, onnx_model) <= EXACT


class MatMulOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3)) @ self.w  # MatMul (no bias) is the graph output


def test_matmul_bias_shift_keeps_the_graph_output_name():
    torch.manual_seed(17)
    model = MatMulOutput().eval()
    kill(model.conv, [1, 2], const=NONZERO)
    names = [v.name for v in export(model).graph.outputs]
    onnx_model, result = slim(model)
    assert details(result) == {"/conv/Conv": (8, 6)}
    assert channels(onnx_model, "/MatMul") == (6, 6)
    assert ops(onnx_model)["Add"] == 1  # the removed constants' contribution
    assert [v.name for v in onnx_model.graph.outputs] == names
    assert rel_error(model, onnx_model) <= EXACT


def test_split_with_num_outputs_gets_explicit_sizes():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(18)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w[[1, 6]] = 0.0
    arrays = {
        "w": w, "b": rng.standard_normal(8).astype(np.float32),
        "wa": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
        "wb": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Split", ["c"], ["p", "q"], axis=1, num_outputs=2, name="split"),
            helper.make_node("Conv", ["p", "wa"], ["pa"], name="conv_a"),
            helper.make_node("Conv", ["q", "wb"], ["qb"], name="conv_b"),
            helper.make_node("Add", ["pa", "qb"], ["y"], name="add"),
        ],
        "split18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    onnx_model = ir.from_proto(proto)
    cleanup_graph(onnx_model)
    result = remove_pruned_channels(onnx_model)
    cleanup_graph(onnx_model)
    assert details(result) == {"conv": (8, 6)}
    assert channels(onnx_model, "conv_a") == (3, 4) and channels(onnx_model, "conv_b") == (3, 4)
    split = node(onnx_model, "split")
    assert "num_outputs" not in split.attributes and split.inputs[1].const_value.numpy().tolist() == [3, 3]
    out = ort.InferenceSession(ir.to_proto(onnx_model).SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() <= EXACT


class BroadcastRank2(nn.Module):
    """(N, 16) * (N, 16, 16, 16): broadcasting puts the vector on W, not on the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(3, 16)
        self.pw = nn.Conv2d(16, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(torch.relu(self.conv(x)) * self.fc(x.mean((2, 3)))))


def test_lower_rank_operand_is_not_coupled_to_channels():
    torch.manual_seed(19)
    model = BroadcastRank2().eval()
    kill(model.conv, [2, 5], const=ZERO)  # x * v is 0 in these channels, but v's features are W columns
    onnx_model, result = slim(model)
    assert result.details == []
    assert channels(onnx_model, "/fc/Gemm") == (3, 16)
    assert "Mul" in reasons(result)
    assert rel_error(model, onnx_model) <= EXACT


class TransposedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(torch.relu(self.conv(x))))


def test_conv_transpose_nonzero_constant_kept_even_with_approx():
    torch.manual_seed(20)
    model = TransposedNet().eval()
    kill(model.conv, [1, 2], const=NONZERO)  # through a stride-2 ConvTranspose: a 2x2 pattern, not a bias
    for approx in (False, True):
        onnx_model, result = slim(model, approx=approx)
        assert result.details == [] and channels(onnx_model, "/up/ConvTranspose") == (8, 8)
        assert "ConvTranspose" in reasons(result)
        assert rel_error(model, onnx_model) <= EXACT
    kill(model.conv, [1, 2], const=ZERO)
    onnx_model, result = slim(model)
    assert details(result) == {"/conv/Conv": (8, 6)}
    assert channels(onnx_model, "/up/ConvTranspose") == (6, 8)
    assert rel_error(model, onnx_model) <= EXACT


def test_symbolic_batch_dimension_does_not_disable_the_pass():
    model = basic_net(ZERO)
    onnx_model, result = slim(model, dynamic_batch=True)
    assert str(onnx_model.graph.inputs[0].shape[0]) == "N"
    assert details(result) == {"/conv1/Conv": (16, 13)}
    assert channels(onnx_model, "/conv2/Conv") == (13, 16)
    assert rel_error(model, onnx_model, (3, 3, 16, 16)) <= EXACT  # batch 3 through the dynamic axis
