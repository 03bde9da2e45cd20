"""Facts about an ONNX node that more than one exporter checks before converting it."""
from __future__ import annotations

import onnx_ir as ir


def transposed_conv_grows(node: ir.Node) -> bool:
    """A ConvTranspose whose output (from an output_shape attribute) is larger than the full
    transposed convolution, (in - 1) * stride + (k - 1) * dilation + 1 + output_padding: ONNX pads the
    result with negative pads, which the TFLite and ncnn lowerings do not do."""
    if node.op_type != "ConvTranspose" or len(node.inputs) < 2:
        return False
    x, w, y = node.inputs[0].shape, node.inputs[1].shape, node.outputs[0].shape
    if x is None or w is None or y is None:
        return False
    spatial = len(x) - 2
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    dilations = list(node.attributes.get_ints("dilations", [1] * spatial))
    extra = list(node.attributes.get_ints("output_padding", [0] * spatial))
    for i in range(spatial):
        full = (x[2 + i] - 1) * strides[i] + (w[2 + i] - 1) * dilations[i] + 1 + extra[i]
        if isinstance(full, int) and isinstance(y[2 + i], int) and y[2 + i] > full:
            return True
    return False
