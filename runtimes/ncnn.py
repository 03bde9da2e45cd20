"""ncnn adapter (ncnn's Python wheel): load a `.param` (its `.bin` beside it) and run NCHW numpy feeds.

ncnn Mats have no batch axis: each batch item is fed as its own (C, H, W) / (H, W) / (W,) Mat and the
outputs are stacked back along a new batch axis, so `run` takes and returns arrays with the batch
dim like every other adapter. ncnn params do not store input shapes: `inputs[i]["shape"]` is None
unless the Input layer declares one.

Options (explicit keywords, so a typo is an error): `threads`; `fp16` None (ncnn's defaults: fp16
storage and arithmetic where the CPU has them, e.g. ARMv8.2), False (all fp16 paths off) or True
(storage, packed and arithmetic on); `int8` (int8 inference for int8 layers; ncnn's default on);
`optimize=False`: the plain reference configuration (no fp16, no packing layout, no Winograd or
sgemm convolution, no light mode) for checking an artifact against the optimized kernels."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import UsageError


def _param_inputs(param: Path) -> list[dict]:
    """Input layers of a text .param: name and, when declared (0=w 1=h 2=c), the NCHW shape."""
    rows = []
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if len(parts) < 5 or parts[0] != "Input":
            continue
        name = parts[4 + int(parts[2])]
        kv = dict(p.split("=", 1) for p in parts[4 + int(parts[2]) + int(parts[3]):] if "=" in p)
        dims = [int(kv[k]) for k in ("2", "1", "0") if int(kv.get(k, 0)) > 0]  # c, h, w
        rows.append({"name": name, "shape": [1, *dims] if dims else None, "dtype": "float32"})
    return rows


def check_loads(param: str | Path) -> None:
    """ncnn loads `param` and the .bin beside it (run in a child by edgepack.runtimes.isolated: ncnn
    may crash on a damaged file). A UsageError when it refuses them."""
    Ncnn().load(param)


class NcnnSession:
    def __init__(self, net: Any, inputs: list[dict]) -> None:
        self._net = net
        self.input_names = list(net.input_names())
        self.output_names = list(net.output_names())
        declared = {row["name"]: row for row in inputs}
        self.inputs = [declared.get(n, {"name": n, "shape": None, "dtype": "float32"}) for n in self.input_names]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ncnn

        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing or unknown:
            raise UsageError(f"ncnn feeds {sorted(feeds)}; the model's inputs are {self.input_names}: "
                             "pass one array per input name")
        batches = {len(v) for v in feeds.values()}
        if len(batches) != 1:
            raise UsageError(f"ncnn feeds have different batch sizes {sorted(batches)}; give every input the same batch")
        outputs: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for b in range(batches.pop()):
            with self._net.create_extractor() as ex:
                for name, value in feeds.items():
                    ex.input(name, ncnn.Mat(np.ascontiguousarray(value[b], dtype=np.float32)).clone())
                for name in self.output_names:
                    ret, mat = ex.extract(name)
                    if ret != 0:
                        raise RuntimeError(f"ncnn failed to compute blob {name!r} (code {ret})")
                    outputs[name].append(np.array(mat, dtype=np.float32, copy=True))
        return {n: np.stack(v) for n, v in outputs.items()}


class Ncnn:
    name = "ncnn"

    def version(self) -> str:
        import ncnn

        return ncnn.__version__

    def load(self, artifact: Any, *, threads: int | None = None, optimize: bool = True, fp16: bool | None = None,
             int8: bool = True) -> NcnnSession:
        """`artifact`: the .param path; the .bin beside it (same stem) holds the weights."""
        import ncnn

        param = Path(artifact)
        weights = param.with_suffix(".bin")
        for f in (param, weights):
            if not f.is_file():
                raise UsageError(f"ncnn model file {f} not found; an ncnn artifact is a .param with its .bin beside it")
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = threads or 1
        opt.use_int8_inference = int8
        if not optimize or fp16 is False:
            for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
                setattr(opt, flag, False)
        elif fp16:
            for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"):
                setattr(opt, flag, True)
        if not optimize:
            opt.lightmode = False
            opt.use_packing_layout = False
            opt.use_winograd_convolution = False
            opt.use_sgemm_convolution = False
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise UsageError(f"ncnn cannot load {param} / {weights.name}: not an ncnn model, or the .bin does not "
                             "belong to this .param; re-export it")
        return NcnnSession(net, _param_inputs(param))
