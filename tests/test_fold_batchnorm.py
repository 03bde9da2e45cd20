"""fold_batchnorm: every case asserts structure (op counts, what `result.counts` says was folded
where, the `skipped` reasons) and numerics against a reference with an explicit fp32 tolerance.

The dynamo exporter folds Conv->BN, ConvTranspose->BN and Linear->BN1d itself, so graphs here are
built with `onnx.helper` (reference: the same unfolded graph in ONNX Runtime with every
optimization off) or with the TorchScript exporter in TrainingMode.PRESERVE on an eval-mode model,
which leaves BatchNormalization in (reference: PyTorch eager). Every BN gets random statistics,
gamma and beta, and a non-default epsilon where the graph is hand-built, so a wrong fold shows."""
from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgepack
from edgepack.converters.cleanup_graph import infer_shapes
from edgepack.converters.fold_batchnorm import fold_batchnorm
from edgepack.options import ExportOptions
from edgepack.pipeline import graph_passes

torch = pytest.importorskip("torch", reason="the TorchScript-exported cases and the pipeline case need torch")
nn = torch.nn

# fp32: allow 1e-4 relative and 1e-5 absolute error, the absolute part scaled by the output's size.
RTOL = 1e-4
ATOL = 1e-5
EPS = 1e-3  # non-default BN epsilon in hand-built graphs, so a fold that ignores it is caught


# ---------------------------------------------------------------- helpers


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL * scale)


def counts(into_producer: int = 0, into_consumer: int = 0, to_mul_add: int = 0, kept: int = 0) -> dict[str, int]:
    return {"into_producer": into_producer, "into_consumer": into_consumer, "to_mul_add": to_mul_add, "kept": kept}


def ops(proto: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def run_onnx(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def fold(proto: onnx.ModelProto, *, infer: bool = True):
    """Shape inference (the pipeline's cleanup_graph ends with it), then the pass alone, so the
    structure checked is what fold_batchnorm itself left. The result must be a valid model
    (the checker needs the graph inputs' shapes, so only graphs that have them are checked)."""
    model = ir.from_proto(proto)
    if infer:
        infer_shapes(model)
    result = fold_batchnorm(model)
    folded = ir.to_proto(model)
    if infer:
        onnx.checker.check_model(folded, full_check=True)
    return result, folded


class Graph:
    """A small onnx.helper graph with seeded random weights and BN statistics."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: dict[str, tuple[int, ...] | None] = {}

    def input(self, name: str, shape: tuple[int, ...] | None) -> str:
        self.inputs[name] = shape
        return name

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        return self.const(name, self.rng.normal(0.0, 0.5, shape))

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{output}_{op}", **attrs))
        return output

    def bn(self, x: str, y: str, channels: int, zero_shift: bool = False) -> str:
        """BatchNormalization with random gamma (either sign), beta, mean and var. zero_shift
        makes t = beta - mean * s exactly 0 (mean = beta = 0) while the scale stays non-trivial."""
        gamma = self.rng.uniform(0.5, 2.0, channels) * self.rng.choice([-1.0, 1.0], channels)
        beta = np.zeros(channels) if zero_shift else self.rng.normal(0.0, 1.0, channels)
        mean = np.zeros(channels) if zero_shift else self.rng.normal(0.0, 1.0, channels)
        var = self.rng.uniform(0.01, 2.0, channels)
        names = [self.const(f"{y}_{p}", a) for p, a in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var))]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *names], [y], name=f"{y}_BN", epsilon=EPS))
        return y

    def model(self, outputs: list[str] | dict[str, tuple[int, ...] | None]) -> onnx.ModelProto:
        outputs = outputs if isinstance(outputs, dict) else {o: None for o in outputs}
        graph = helper.make_graph(
            self.nodes, "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in self.inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
            self.inits,
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        if all(s is not None for s in self.inputs.values()):
            proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)  # fills the outputs' shapes
            onnx.checker.check_model(proto, full_check=True)
        return proto

    def feeds(self, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
        shapes = shapes or self.inputs
        return {n: self.rng.normal(0.0, 1.0, s).astype(np.float32) for n, s in shapes.items()}


def fold_and_compare(g: Graph, proto: onnx.ModelProto, *, infer: bool = True, feed_shapes=None):
    """Fold, then compare every output with the unfolded graph in ONNX Runtime (optimizations off)."""
    feeds = g.feeds(feed_shapes)
    reference = run_onnx(proto, feeds)
    result, folded = fold(proto, infer=infer)
    actual = run_onnx(folded, feeds)
    assert sorted(actual) == sorted(reference)
    for name, ref in reference.items():
        assert_close(actual[name], ref)
    return result, folded


def why(result) -> str:
    return " | ".join(s["why"] for s in result.skipped)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN running statistics, gamma and beta; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_((torch.rand(m.num_features, generator=gen) + 0.5) * torch.sign(torch.randn(m.num_features, generator=gen)))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.05)
    return model.eval()


def torchscript_onnx(model: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """TorchScript exporter, BN preserved (an eval-mode model keeps running statistics)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          training=torch.onnx.TrainingMode.PRESERVE)
    proto = onnx.load_model_from_string(buf.getvalue())
    assert ops(proto)["BatchNormalization"] > 0, "the exporter folded BN itself; this test would prove nothing"
    return proto


def torch_case(model: nn.Module, shape: tuple[int, ...], seed: int = 0):
    """Export with TorchScript, run the pipeline's graph passes in order, compare with PyTorch eager."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        expected = model(x).numpy()
    proto = torchscript_onnx(model, x)
    ir_model = ir.from_proto(proto)
    results = [graph_pass(ir_model) for _, graph_pass in graph_passes(ExportOptions.create("."))]
    folded = ir.to_proto(ir_model)
    onnx.checker.check_model(folded, full_check=True)
    actual = run_onnx(folded, {"x": x.numpy()})["y"]
    assert_close(actual, expected)
    (result,) = [r for r in results if r.name == "fold_batchnorm"]
    return result, folded


# ---------------------------------------------------------------- 1. Conv -> BN


@pytest.mark.parametrize(
    "group, bias",
    [(1, True), (1, False), (2, True), (8, False)],
    ids=["conv-bias", "conv-no-bias", "grouped", "depthwise"],
)
def test_conv_then_bn_folds_into_conv(group, bias):
    g = Graph(1)
    cin, cout = 8, 8
    inputs = [g.input("X", (1, cin, 12, 12)), g.weight("W", (cout, cin // group, 3, 3))]
    if bias:
        inputs.append(g.weight("B", (cout,)))
    g.node("Conv", inputs, "c", group=group, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    g.bn("c", "Y", cout)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_producer=1)
    assert result.modified and result.skipped == []
    assert result.details == [{"node": "Y_BN", "folded_into": "c_Conv", "where": "producer"}]
    assert ops(folded) == {"Conv": 1}
    conv = folded.graph.node[0]
    assert len(conv.input) == 3 and conv.input[2], "the folded Conv needs a bias for the BN shift"


def test_conv_then_bn_torchscript():
    model = randomize_bn(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()))
    result, folded = torch_case(model, (2, 4, 10, 10))
    assert result.counts == counts(into_producer=1)
    assert ops(folded) == {"Conv": 1, "Relu": 1}


# ---------------------------------------------------------------- 2. ConvTranspose -> BN


@pytest.mark.parametrize("group, bias", [(1, True), (2, False), (2, True)], ids=["g1-bias", "g2-no-bias", "g2-bias"])
def test_conv_transpose_then_bn_folds_into_conv_transpose(group, bias):
    g = Graph(2)
    cin, cout = 8, 6
    inputs = [g.input("X", (1, cin, 6, 6)), g.weight("W", (cin, cout // group, 3, 3))]
    if bias:
        inputs.append(g.weight("B", (cout,)))
    g.node("ConvTranspose", inputs, "c", group=group, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
           output_padding=[1, 1])
    g.bn("c", "Y", cout)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_producer=1)
    assert result.skipped == []
    assert ops(folded) == {"ConvTranspose": 1}


def test_conv_transpose_then_bn_torchscript():
    model = randomize_bn(nn.Sequential(nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2), nn.BatchNorm2d(4)))
    result, folded = torch_case(model, (1, 8, 8, 8))
    assert result.counts == counts(into_producer=1)
    assert ops(folded) == {"ConvTranspose": 1}


# ---------------------------------------------------------------- 3. Gemm / MatMul (+ Add) -> BN


@pytest.mark.parametrize("trans_b", [1, 0])
@pytest.mark.parametrize("with_c", [True, False], ids=["C", "no-C"])
def test_gemm_then_bn_folds_into_gemm(trans_b, with_c):
    g = Graph(3)
    k, n = 6, 5
    inputs = [g.input("X", (4, k)), g.weight("W", (n, k) if trans_b else (k, n))]
    if with_c:
        inputs.append(g.weight("C", (n,)))
    g.node("Gemm", inputs, "z", transB=trans_b, alpha=0.7, beta=1.3)
    g.bn("z", "Y", n)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_producer=1)
    assert result.skipped == []
    assert ops(folded) == {"Gemm": 1}


def test_linear_then_bn1d_torchscript():
    model = randomize_bn(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU()))
    result, folded = torch_case(model, (4, 6))
    assert result.counts == counts(into_producer=1)
    assert ops(folded) == {"Gemm": 1, "Relu": 1}


def test_matmul_const_weight_then_bn_folds_into_matmul():
    g = Graph(4)
    g.node("MatMul", [g.input("X", (4, 6)), g.weight("W", (6, 5))], "z")
    g.bn("z", "Y", 5)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_producer=1)
    assert result.skipped == []
    assert ops(folded) == {"MatMul": 1, "Add": 1}


@pytest.mark.parametrize("bias_first", [False, True], ids=["matmul+bias", "bias+matmul"])
@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), (1,)], ids=["bias-n", "bias-1xn", "bias-scalar"])
def test_matmul_add_bias_then_bn_folds_into_matmul_and_bias(bias_first, bias_shape):
    g = Graph(5)
    g.node("MatMul", [g.input("X", (4, 6)), g.weight("W", (6, 5))], "z")
    b = g.weight("b", bias_shape)
    g.node("Add", [b, "z"] if bias_first else ["z", b], "zb")
    g.bn("zb", "Y", 5)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_producer=1)
    assert result.skipped == []
    assert ops(folded) == {"MatMul": 1, "Add": 1}


def test_matmul_on_3d_input_then_bn_is_not_folded_into_matmul():
    """BN's channel axis is 1, MatMul's feature axis is the last: no producer fold."""
    g = Graph(6)
    g.node("MatMul", [g.input("X", (2, 5, 6)), g.weight("W", (6, 5))], "z")  # (2, 5, 5): BN over axis 1
    g.bn("z", "Y", 5)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert "not 2-D" in why(result)
    assert ops(folded) == {"MatMul": 1, "Mul": 1, "Add": 1}


@pytest.mark.parametrize(
    "x_shape, bias_shape",
    [((5, 6), (5, 1)), ((5, 6), (1, 1, 5))],
    ids=["per-row-bias", "bias-makes-output-3d"],
)
def test_matmul_add_with_non_feature_bias_is_not_folded_into_matmul(x_shape, bias_shape):
    """The bias must broadcast along the feature axis only and keep the output 2-D."""
    g = Graph(7)
    g.node("MatMul", [g.input("X", x_shape), g.weight("W", (6, 5))], "z")
    g.node("Add", ["z", g.weight("b", bias_shape)], "zb")
    g.bn("zb", "Y", 5)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert "bias" in why(result) or "2-D" in why(result)
    assert ops(folded) == {"MatMul": 1, "Mul": 1, "Add": 2}


def test_matmul_output_used_twice_is_not_folded_into_matmul():
    g = Graph(8)
    g.node("MatMul", [g.input("X", (4, 6)), g.weight("W", (6, 5))], "z")
    g.node("Add", ["z", g.weight("b", (5,))], "zb")
    g.bn("zb", "Y", 5)
    g.node("Relu", ["z"], "Y2")
    result, folded = fold_and_compare(g, g.model(["Y", "Y2"]))
    assert result.counts == counts(to_mul_add=1)
    assert "MatMul output also feeds" in why(result)
    assert ops(folded) == {"MatMul": 1, "Add": 2, "Mul": 1, "Relu": 1}


# ---------------------------------------------------------------- 4. pre-activation: BN -> consumer


@pytest.mark.parametrize(
    "kernel, stride, group, bias",
    [(1, 1, 1, True), (3, 1, 1, False), (3, 2, 1, True), (3, 1, 2, True), (3, 1, 8, False)],
    ids=["1x1", "3x3-pads0", "3x3-stride2", "3x3-grouped", "3x3-depthwise"],
)
def test_bn_then_unpadded_conv_folds_into_consumer(kernel, stride, group, bias):
    g = Graph(10)
    c, cout = 8, 8
    g.node("Relu", [g.input("X", (1, c, 11, 11))], "r")
    g.bn("r", "n", c)
    inputs = ["n", g.weight("W", (cout, c // group, kernel, kernel))]
    if bias:
        inputs.append(g.weight("B", (cout,)))
    g.node("Conv", inputs, "Y", kernel_shape=[kernel, kernel], strides=[stride, stride], group=group,
           pads=[0, 0, 0, 0])
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_consumer=1)
    assert result.skipped == []
    assert result.details == [{"node": "n_BN", "folded_into": "Y_Conv", "where": "consumers"}]
    assert ops(folded) == {"Relu": 1, "Conv": 1}


def test_bn_on_graph_input_then_conv_folds_into_consumer():
    g = Graph(11)
    g.bn(g.input("X", (2, 4, 9, 9)), "n", 4)
    g.node("Conv", ["n", g.weight("W", (6, 4, 3, 3)), g.weight("B", (6,))], "Y", kernel_shape=[3, 3])
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_consumer=1)
    assert ops(folded) == {"Conv": 1}


def test_bn_then_two_unpadded_convs_folds_into_both():
    g = Graph(12)
    g.node("Relu", [g.input("X", (1, 8, 10, 10))], "r")
    g.bn("r", "n", 8)
    g.node("Conv", ["n", g.weight("W1", (4, 8, 1, 1))], "Y1", kernel_shape=[1, 1])
    g.node("Conv", ["n", g.weight("W2", (6, 8, 3, 3)), g.weight("B2", (6,))], "Y2", kernel_shape=[3, 3],
           pads=[0, 0, 0, 0], strides=[2, 2])
    result, folded = fold_and_compare(g, g.model(["Y1", "Y2"]))
    assert result.counts == counts(into_consumer=1)
    assert result.details == [{"node": "n_BN", "folded_into": "Y1_Conv, Y2_Conv", "where": "consumers"}]
    assert ops(folded) == {"Relu": 1, "Conv": 2}


@pytest.mark.parametrize("trans_b", [1, 0])
@pytest.mark.parametrize("with_c", [True, False], ids=["C", "no-C"])
def test_bn1d_then_gemm_folds_into_consumer(trans_b, with_c):
    g = Graph(13)
    k, n = 6, 5
    g.node("Relu", [g.input("X", (4, k))], "r")
    g.bn("r", "bn", k)
    inputs = ["bn", g.weight("W", (n, k) if trans_b else (k, n))]
    if with_c:
        inputs.append(g.weight("C", (n,)))
    g.node("Gemm", inputs, "Y", transB=trans_b, alpha=0.7, beta=1.3)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_consumer=1)
    assert result.skipped == []
    assert ops(folded) == {"Relu": 1, "Gemm": 1}


def test_bn1d_then_linear_torchscript():
    model = randomize_bn(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 5)))
    result, folded = torch_case(model, (4, 6))
    assert result.counts == counts(into_consumer=1)
    assert ops(folded) == {"Relu": 1, "Gemm": 1}


def test_bn_with_zero_shift_folds_into_padded_conv():
    """t == 0: zero padding of x and of x * s agree, so a padded consumer is exact."""
    g = Graph(14)
    g.node("Relu", [g.input("X", (1, 8, 10, 10))], "r")
    g.bn("r", "n", 8, zero_shift=True)
    g.node("Conv", ["n", g.weight("W", (4, 8, 3, 3))], "Y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_consumer=1)
    assert ops(folded) == {"Relu": 1, "Conv": 1}


def test_bn_then_gemm_with_transposed_input_is_not_folded_into_consumer():
    g = Graph(15)
    g.node("Relu", [g.input("X", (6, 4))], "r")  # BN channels = 4, Gemm reads r^T (4, 6)
    g.bn("r", "bn", 4)
    g.node("Gemm", ["bn", g.weight("W", (6, 5))], "Y", transA=1)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert "transposes its input" in why(result)


# ---------------------------------------------------------------- 5. BN -> padded Conv: Mul + Add


@pytest.mark.parametrize("padding", ["pads", "same_upper"])
def test_bn_then_padded_conv_becomes_mul_add(padding):
    g = Graph(20)
    g.node("Relu", [g.input("X", (1, 8, 10, 10))], "r")
    g.bn("r", "n", 8)
    attrs = {"pads": [1, 1, 1, 1]} if padding == "pads" else {"auto_pad": "SAME_UPPER"}
    g.node("Conv", ["n", g.weight("W", (4, 8, 3, 3)), g.weight("B", (4,))], "Y", kernel_shape=[3, 3], **attrs)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert len(result.skipped) == 1 and result.skipped[0]["node"] == "n_BN"
    reason = result.skipped[0]["why"]
    assert "pad" in reason and "Y_Conv" in reason
    assert "Relu" in reason, "the producer's refusal is reported too"
    assert ops(folded) == {"Relu": 1, "Mul": 1, "Add": 1, "Conv": 1}
    # per-channel constants shaped to broadcast over N, C, H, W
    shapes = {i.name: list(i.dims) for i in folded.graph.initializer}
    mul = next(n for n in folded.graph.node if n.op_type == "Mul")
    assert shapes[mul.input[1]] == [8, 1, 1]


def test_bn_then_padded_and_unpadded_convs_becomes_mul_add():
    g = Graph(21)
    g.node("Relu", [g.input("X", (1, 8, 10, 10))], "r")
    g.bn("r", "n", 8)
    g.node("Conv", ["n", g.weight("W1", (4, 8, 1, 1))], "Y1", kernel_shape=[1, 1])
    g.node("Conv", ["n", g.weight("W2", (4, 8, 3, 3))], "Y2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    result, folded = fold_and_compare(g, g.model(["Y1", "Y2"]))
    assert result.counts == counts(to_mul_add=1)
    assert "Y2_Conv zero-pads" in why(result)
    assert ops(folded) == {"Relu": 1, "Mul": 1, "Add": 1, "Conv": 2}
    # neither consumer was touched: both still read their original weights
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    assert [n.input[1] for n in convs] == ["W1", "W2"]


def test_torchscript_relu_bn_padded_conv_becomes_mul_add():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1)))
    result, folded = torch_case(model, (1, 3, 10, 10))
    assert result.counts == counts(to_mul_add=1)
    assert "pad" in why(result)
    assert ops(folded) == {"Conv": 2, "Relu": 1, "Mul": 1, "Add": 1}


# ---------------------------------------------------------------- 6. unabsorbing producers


def test_bn_after_concat_becomes_mul_add():
    g = Graph(30)
    g.node("Concat", [g.input("A", (1, 3, 8, 8)), g.input("B", (1, 5, 8, 8))], "cat", axis=1)
    g.bn("cat", "n", 8)
    g.node("Relu", ["n"], "Y")
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert "Concat" in why(result)
    assert ops(folded) == {"Concat": 1, "Mul": 1, "Add": 1, "Relu": 1}


def test_conv_output_also_feeding_add_is_not_folded_into_conv():
    g = Graph(31)
    g.node("Conv", [g.input("X", (1, 4, 8, 8)), g.weight("W", (8, 4, 3, 3)), g.weight("B", (8,))], "c",
           kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.bn("c", "n", 8)
    g.node("Add", ["n", "c"], "Y")
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert "Conv output also feeds 1 other node(s)" in why(result)
    assert ops(folded) == {"Conv": 1, "Mul": 1, "Add": 2}
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert list(conv.input) == ["X", "W", "B"], "the Conv must keep its weights"


def test_conv_output_that_is_a_graph_output_is_not_folded_into_conv():
    g = Graph(32)
    g.node("Conv", [g.input("X", (1, 4, 8, 8)), g.weight("W", (8, 4, 1, 1))], "C", kernel_shape=[1, 1])
    g.bn("C", "Y", 8)
    result, folded = fold_and_compare(g, g.model(["C", "Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert "graph output" in why(result)
    assert ops(folded) == {"Conv": 1, "Mul": 1, "Add": 1}


# ---------------------------------------------------------------- 7. BN output is a graph output


@pytest.mark.parametrize("where", ["conv", "gemm", "matmul", "matmul_add", "mul_add"])
def test_bn_graph_output_keeps_name_and_shape(where):
    g = Graph(40)
    if where == "conv":
        g.node("Conv", [g.input("X", (1, 4, 8, 8)), g.weight("W", (8, 4, 3, 3))], "z", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        shape = (1, 8, 8, 8)
    elif where == "gemm":
        g.node("Gemm", [g.input("X", (4, 6)), g.weight("W", (8, 6))], "z", transB=1)
        shape = (4, 8)
    elif where == "matmul":
        g.node("MatMul", [g.input("X", (4, 6)), g.weight("W", (6, 8))], "z")
        shape = (4, 8)
    elif where == "matmul_add":
        g.node("MatMul", [g.input("X", (4, 6)), g.weight("W", (6, 8))], "m")
        g.node("Add", ["m", g.weight("b", (8,))], "z")
        shape = (4, 8)
    else:
        g.node("Concat", [g.input("A", (1, 3, 8, 8)), g.input("B", (1, 5, 8, 8))], "z", axis=1)
        shape = (1, 8, 8, 8)
    g.bn("z", "Y", 8)
    result, folded = fold_and_compare(g, g.model({"Y": shape}))
    expected = counts(to_mul_add=1) if where == "mul_add" else counts(into_producer=1)
    assert result.counts == expected
    assert ops(folded)["BatchNormalization"] == 0
    (out,) = folded.graph.output
    assert out.name == "Y"
    assert out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == list(shape)
    assert "Y" in {o for n in folded.graph.node for o in n.output}, "a node must produce the graph output"


# ---------------------------------------------------------------- 8. shared weights


def test_shared_conv_weight_is_not_changed_for_the_conv_without_bn():
    g = Graph(50)
    x = g.input("X", (1, 8, 8, 8))
    g.weight("W", (8, 8, 3, 3))
    g.node("Conv", [x, "W"], "a", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.bn("a", "Y1", 8)
    g.node("Conv", [x, "W"], "Y2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    proto = g.model(["Y1", "Y2"])
    result, folded = fold_and_compare(g, proto)
    assert result.counts == counts(into_producer=1)
    assert ops(folded) == {"Conv": 2}
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    conv_b = next(n for n in folded.graph.node if n.output[0] == "Y2")
    np.testing.assert_array_equal(inits[conv_b.input[1]], numpy_helper.to_array(proto.graph.initializer[0]))


def test_shared_conv_weight_consumer_fold_leaves_the_other_conv_alone():
    g = Graph(51)
    x = g.input("X", (1, 8, 8, 8))
    g.weight("W", (8, 8, 1, 1))
    g.node("Relu", [x], "r")
    g.bn("r", "n", 8)
    g.node("Conv", ["n", "W"], "Y1", kernel_shape=[1, 1])
    g.node("Conv", [x, "W"], "Y2", kernel_shape=[1, 1])
    proto = g.model(["Y1", "Y2"])
    result, folded = fold_and_compare(g, proto)
    assert result.counts == counts(into_consumer=1)
    assert ops(folded) == {"Relu": 1, "Conv": 2}
    conv_b = next(n for n in folded.graph.node if n.output[0] == "Y2")
    assert list(conv_b.input) == ["X", "W"]


# ---------------------------------------------------------------- 9. 1-D: Conv1d -> BatchNorm1d


def test_conv1d_then_bn1d_folds_into_conv():
    g = Graph(60)
    g.node("Conv", [g.input("X", (2, 4, 16)), g.weight("W", (8, 4, 3)), g.weight("B", (8,))], "c",
           kernel_shape=[3], pads=[1, 1])
    g.bn("c", "Y", 8)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_producer=1)
    assert ops(folded) == {"Conv": 1}


def test_conv1d_then_bn1d_torchscript():
    model = randomize_bn(nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                                       nn.BatchNorm1d(8), nn.Conv1d(8, 6, 1)))
    result, folded = torch_case(model, (2, 4, 16))
    assert result.counts == counts(into_producer=1, into_consumer=1)
    assert ops(folded) == {"Conv": 2, "Relu": 1}


@pytest.mark.parametrize("shape", [(2, 8, 16), (4, 8)], ids=["NCL", "NC"])
def test_standalone_bn1d_becomes_mul_add_with_the_right_broadcast(shape):
    g = Graph(61)
    g.node("Relu", [g.input("X", shape)], "r")
    g.bn("r", "Y", 8)
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert ops(folded) == {"Relu": 1, "Mul": 1, "Add": 1}


# ---------------------------------------------------------------- what is kept, and why


def test_bn_with_non_constant_scale_is_kept_with_reason():
    g = Graph(70)
    g.node("Conv", [g.input("X", (1, 4, 8, 8)), g.weight("W", (4, 4, 1, 1))], "c", kernel_shape=[1, 1])
    g.bn("c", "Y", 4)
    g.nodes[-1].input[1] = g.input("gamma", (4,))
    g.inits = [i for i in g.inits if i.name != "Y_gamma"]
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(kept=1)
    assert not result.modified
    assert "not a constant" in why(result)
    assert ops(folded) == {"Conv": 1, "BatchNormalization": 1}


def test_bn_of_unknown_rank_is_kept_with_reason():
    """Mul + Add needs the input rank; without shapes the BN stays, and the report says so."""
    g = Graph(71)
    g.node("Relu", [g.input("X", None)], "r")
    g.bn("r", "Y", 8)
    result, folded = fold_and_compare(g, g.model(["Y"]), infer=False, feed_shapes={"X": (1, 8, 4, 4)})
    assert result.counts == counts(kept=1)
    assert "rank unknown" in why(result)
    assert ops(folded) == {"Relu": 1, "BatchNormalization": 1}


def test_bn_feeding_a_gemm_weight_input_names_that_input():
    g = Graph(73)
    g.node("Relu", [g.input("Wd", (6, 5))], "r")
    g.bn("r", "n", 5)
    g.node("Gemm", [g.input("X", (4, 6)), "n"], "Y")
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(to_mul_add=1)
    assert "feeds input 1 of Gemm Y_Gemm" in why(result)
    assert ops(folded) == {"Relu": 1, "Mul": 1, "Add": 1, "Gemm": 1}


def test_float16_input_with_float_statistics_becomes_float16_mul_add():
    """Since opset 15 scale/bias/mean/var may be float while X is float16; Mul + Add must be float16."""
    rng = np.random.default_rng(74)
    c = 8
    params = {"gamma": rng.uniform(0.5, 2.0, c), "beta": rng.normal(0, 1, c), "mean": rng.normal(0, 1, c),
              "var": rng.uniform(0.1, 2.0, c)}
    graph = helper.make_graph(
        [helper.make_node("Concat", ["A", "B"], ["cat"], axis=1, name="cat_Concat"),
         helper.make_node("BatchNormalization", ["cat", *params], ["Y"], name="Y_BN", epsilon=EPS)],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT16, (1, 3, 6, 6)),
         helper.make_tensor_value_info("B", TensorProto.FLOAT16, (1, 5, 6, 6))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, (1, c, 6, 6))],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"A": rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float16), "B": rng.normal(0, 1, (1, 5, 6, 6)).astype(np.float16)}
    reference = run_onnx(proto, feeds)["Y"].astype(np.float32)
    result, folded = fold(proto)
    assert result.counts == counts(to_mul_add=1)
    assert ops(folded) == {"Concat": 1, "Mul": 1, "Add": 1}
    assert {i.data_type for i in folded.graph.initializer if i.name not in params} == {TensorProto.FLOAT16}
    actual = run_onnx(folded, feeds)["Y"]
    assert actual.dtype == np.float16
    # fp16: two roundings (x * s, then + t) against BN's one; 1e-2 relative to the output scale.
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(actual.astype(np.float32), reference, rtol=1e-2, atol=1e-2 * scale)


def test_several_bns_in_one_graph_each_counted():
    """Conv->BN (producer), BN->1x1 Conv (consumer), BN->padded Conv (Mul + Add) in sequence."""
    g = Graph(72)
    g.node("Conv", [g.input("X", (1, 4, 10, 10)), g.weight("W1", (8, 4, 3, 3))], "c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.bn("c1", "n1", 8)
    g.node("Relu", ["n1"], "r1")
    g.bn("r1", "n2", 8)
    g.node("Conv", ["n2", g.weight("W2", (8, 8, 1, 1))], "c2", kernel_shape=[1, 1])
    g.node("Relu", ["c2"], "r2")
    g.bn("r2", "n3", 8)
    g.node("Conv", ["n3", g.weight("W3", (4, 8, 3, 3))], "Y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    result, folded = fold_and_compare(g, g.model(["Y"]))
    assert result.counts == counts(into_producer=1, into_consumer=1, to_mul_add=1)
    assert [s["node"] for s in result.skipped] == ["n3_BN"]
    assert ops(folded) == {"Conv": 3, "Relu": 2, "Mul": 1, "Add": 1}


# ---------------------------------------------------------------- 10. pre-activation ResNet


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(3)  # graph input -> padded Conv: Mul + Add
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block1 = PreActBlock(8, 8, 1)  # bn1: stem output also feeds the residual Add
        self.block2 = PreActBlock(8, 16, 2)  # bn1: after the residual Add
        self.head_bn = nn.BatchNorm2d(16)  # after ReLU, before an unpadded 1x1 Conv: consumer
        self.head = nn.Conv2d(16, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_bn = nn.BatchNorm1d(8)  # after Flatten, before Linear: consumer
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(self.input_bn(x))))
        x = self.head(self.head_bn(torch.relu(x)))
        return self.fc(self.fc_bn(torch.flatten(self.pool(x), 1)))


def test_preact_resnet_torchscript_has_no_bn_left_and_matches_pytorch():
    model = randomize_bn(PreActResNet(), seed=3)
    result, folded = torch_case(model, (2, 3, 16, 16), seed=3)
    assert result.counts == counts(into_producer=2, into_consumer=2, to_mul_add=3)
    assert ops(folded)["BatchNormalization"] == 0
    assert ops(folded)["Mul"] == 3
    reasons = why(result)
    assert "pad" in reasons and "Add" in reasons and "also feeds" in reasons


# ---------------------------------------------------------------- the public pipeline


def test_pipeline_export_folds_bn_the_dynamo_exporter_leaves(tmp_path):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)), seed=4)
    report = edgepack.export(model, output_dir=tmp_path, input_shape="1x3x12x12")
    assert report["model"]["exporter"] == "dynamo"
    (fold_pass,) = [p for p in report["passes"] if p["name"] == "fold_batchnorm"]
    assert fold_pass["counts"] == counts(into_consumer=1)
    (artifact,) = report["artifacts"]
    assert artifact["ok"], artifact["error"]
    assert report["ok"] and report["exit_code"] == 0
    assert not any("BatchNormalization" in w for w in report["warnings"])
    proto = onnx.load(tmp_path / artifact["path"])
    assert ops(proto)["BatchNormalization"] == 0
    assert ops(proto)["Conv"] == 2
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = run_onnx(proto, {proto.graph.input[0].name: x.numpy()}).values()
    assert_close(actual, expected)
