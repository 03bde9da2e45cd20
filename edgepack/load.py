"""Load a model from a path or a Python object, detecting the format from the file's content.

Formats: pickled nn.Module (torch.save(model), only with allow_pickle), TorchScript
(torch.jit.save), ExportedProgram (torch.export.save), a state dict plus `--arch module:factory`,
and ONNX. torch is imported only when the input is a PyTorch one, so an ONNX input works without
torch installed."""
from __future__ import annotations

import copy
import importlib
import inspect
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import LoadError, PickleNotAllowed, UsageError, first_line



@dataclass
class SourceModel:
    """What was loaded. `model` is an nn.Module, ScriptModule or ExportedProgram; `onnx_model` is
    set for ONNX inputs. `input_names`/`stored_shapes` come from the model where it records them."""

    kind: str
    path: Path | None
    model: Any = None
    onnx_model: Any = None
    input_names: list[str] = field(default_factory=list)
    stored_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # ONNX inputs with symbolic dims: the known dims, None where the model leaves a dim open.
    partial_shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    made_permanent: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # ONNX inputs read as values that set shapes (Resize scales, Reshape shape...): input -> what it sets
    value_inputs: dict[str, str] = field(default_factory=dict)

    @property
    def is_torch(self) -> bool:
        return self.kind != "onnx"


def detect_format(path: Path) -> str:
    """Return 'exported-program', 'torchscript', 'torch-pickle' or 'onnx' from the bytes of `path`."""
    if not path.exists():
        raise LoadError(f"model file {path} not found; check the path")
    if path.is_dir():
        raise LoadError(f"{path} is a directory; pass the model file itself (.pt, .pt2, .onnx)")
    if not path.is_file():  # a FIFO, a device such as /dev/urandom: reading could block or never end
        raise LoadError(f"{path} is not a regular file (a pipe or a device); pass the model file itself (.pt, .pt2, .onnx)")
    with open(path, "rb") as f:  # 8 bytes, not the whole (possibly multi-GB) file
        head = f.read(8)
    if not head:
        raise LoadError(f"model file {path} is empty; re-save the model")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise LoadError(f"model file {path} is a damaged zip archive ({exc}); re-save the model") from None
        if any(n.endswith(("/archive_format", "/serialized_exported_program.json", "/models/model.json")) for n in names):
            return "exported-program"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-pickle"
        raise LoadError(f"{path} is a zip archive but not a PyTorch checkpoint, TorchScript or ExportedProgram")
    if head[:1] == b"\x80":  # pickle protocol marker: legacy (non-zip) torch.save
        return "torch-pickle"
    if head[:4] == b"PK\x03\x04":  # a zip's first entry without the directory at its end: cut short
        raise LoadError(
            f"model file {path} starts like a zip archive (PyTorch .pt/.pt2) but its end is missing: the file is truncated "
            "or damaged; copy or save it again"
        )
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # protobuf raises DecodeError and friends
        proto = None
    if proto is not None and len(proto.graph.node) > 0:
        return "onnx"
    raise LoadError(
        f"{path} is not a PyTorch checkpoint, TorchScript, ExportedProgram or ONNX file "
        f"(first bytes {head[:4]!r}); the file may be truncated or of another framework: pass a file written by "
        "torch.save, torch.jit.save, torch.export.save or an .onnx file"
    )


def load_source(obj: Any, *, allow_pickle: bool = False, arch: str | None = None) -> SourceModel:
    """Load a path or accept an in-memory model (nn.Module, ExportedProgram, ScriptModule, onnx.ModelProto)."""
    if isinstance(obj, (str, Path)):
        return _load_path(Path(obj), allow_pickle=allow_pickle, arch=arch)
    return _from_object(_private_copy(obj), None)


def _private_copy(obj: Any) -> Any:
    """Loading makes pruning permanent and switches to eval mode, in place. For a model the caller
    passed in, do that on a copy so their model (pruning hooks, training mode) is left as it was."""
    try:
        import torch
    except ImportError:
        return obj
    if not isinstance(obj, torch.nn.Module) or isinstance(obj, torch.jit.ScriptModule):
        return obj
    mutates = any(m.training for m in obj.modules()) or any(
        _is_pruning_hook(h) for m in obj.modules() for h in m._forward_pre_hooks.values()
    )
    if not mutates:
        return obj
    # torch.nn.utils.prune keeps `weight` as a plain attribute computed from weight_orig * weight_mask:
    # a non-leaf tensor, which deepcopy refuses. Copy those detached (the hook recomputes them anyway).
    memo = {
        id(v): v.detach().clone()
        for m in obj.modules()
        for v in vars(m).values()
        if isinstance(v, torch.Tensor) and not v.is_leaf
    }
    try:
        return copy.deepcopy(obj, memo)
    except Exception:  # some modules cannot be copied; then work on the caller's model
        return obj


def _is_pruning_hook(hook: Any) -> bool:
    from torch.nn.utils import prune

    return isinstance(hook, prune.BasePruningMethod)


def _load_path(path: Path, *, allow_pickle: bool, arch: str | None) -> SourceModel:
    kind = detect_format(path)
    if kind == "onnx":
        return _from_onnx(path)
    torch = _import_torch(path)
    if kind == "exported-program":
        ep = load_exported_program(path, torch, allow_pickle=allow_pickle)
        return _from_object(ep, path)
    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise LoadError(f"cannot load TorchScript {path}: {first_line(exc)}") from None
        return _from_object(module, path, kind="torchscript")
    return _load_torch_pickle(path, torch, allow_pickle=allow_pickle, arch=arch)


def load_exported_program(path: Path, torch: Any, *, allow_pickle: bool) -> Any:
    """torch.export.load, after refusing an archive that would run code from the file (see
    edgepack.safe_pt2). torch gets the same bytes that were checked."""
    import io

    from edgepack.safe_pt2 import check_pt2

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    check_pt2(data, str(path), allow_pickle=allow_pickle)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise LoadError(f"cannot load ExportedProgram {path}: {first_line(exc)}") from None


def _load_torch_pickle(path: Path, torch: Any, *, allow_pickle: bool, arch: str | None) -> SourceModel:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" not in text and "weights_only" not in text.lower():
            raise LoadError(f"cannot read {path}: {first_line(exc)}; the file may be truncated") from None
        if not allow_pickle:
            found = _GLOBAL_RE.search(text)
            needs = f" (it needs the Python class {found.group(1)})" if found else ""
            raise PickleNotAllowed(
                f"{path} is a pickled Python object{needs}, e.g. torch.save(model); loading it runs arbitrary code from "
                "the file. Pass --allow-pickle if you trust it, or save a state dict and pass --arch module:factory, "
                "or save with torch.export.save"
            ) from None
        obj = _unpickle(path, torch)
    cast: list[str] = []
    if isinstance(obj, Mapping) and not isinstance(obj, torch.nn.Module):
        inner = _find_module(obj, torch)
        if inner is not None:  # a training checkpoint holding the module itself: {"model": module, "epoch": ...}
            obj, cast = inner, _float32_weights(inner, torch)
    if isinstance(obj, torch.nn.Module):
        src = _from_object(obj, path, kind="pickled-module")
        if cast:
            src.warnings.append(f"the checkpoint's module holds {', '.join(cast)} weights; cast to float32 for export")
        return src
    if isinstance(obj, Mapping):
        state = _find_state_dict(obj, torch)
        if state is None:
            raise LoadError(
                f"{path} holds a dict without tensors (keys {sorted(map(str, obj))[:6]}); expected a state dict, "
                "a checkpoint with a 'state_dict' entry, or an nn.Module"
            )
        if arch is None:
            raise LoadError(
                f"{path} holds a state dict ({len(state)} tensors) but no architecture; "
                "pass --arch package.module:factory, a callable that builds the nn.Module"
            )
        model, merged, stripped = _build_from_arch(arch, state, path, torch)
        src = _from_object(model, path, kind="state-dict")
        src.made_permanent = merged + src.made_permanent
        if stripped:
            src.warnings.append(f"state dict keys carried the prefix {stripped!r} (DataParallel / wrapper); removed it to match --arch")
        return src
    raise LoadError(f"{path} holds a {type(obj).__name__}, not an nn.Module or a state dict")


_GLOBAL_RE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def _unpickle(path: Path, torch: Any) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except ImportError as exc:  # ModuleNotFoundError too: the defining module is not on sys.path
        missing = getattr(exc, "name", None) or first_line(exc)
        raise LoadError(
            f"{path} is a pickled model whose class cannot be imported (no module named {missing!r}); "
            f"make the module that defines it importable (set PYTHONPATH to the folder that holds {missing}) "
            "or save a state dict and pass --arch module:factory"
        ) from None
    except AttributeError as exc:  # the module imports but the class was renamed or moved
        raise LoadError(
            f"{path} is a pickled model whose class cannot be found ({first_line(exc)}); the class was renamed or "
            "moved since the file was saved: restore it, or save a state dict and pass --arch module:factory"
        ) from None
    except Exception as exc:
        raise LoadError(f"cannot unpickle {path}: {first_line(exc)}") from None


_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "ema")
# A module in the checkpoint: the EMA copy first (ultralytics and timm train with one and deploy it;
# ultralytics' final checkpoints keep `ema` None and the EMA weights in `model`).
_MODULE_KEYS = ("ema", "model", "net", "weights", "state_dict", "model_state_dict")


def _find_module(obj: Mapping, torch: Any) -> Any:
    for key in _MODULE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, torch.nn.Module):
            return inner
    return None


def _float32_weights(module: Any, torch: Any) -> list[str]:
    """Training checkpoints (ultralytics saves `model.half()`) store float16 / bfloat16 weights; the
    export runs in float32, like ultralytics' own loader (`.float()`). Nothing is fused. Returns the
    dtypes that were cast."""
    found = sorted({str(t.dtype).removeprefix("torch.") for t in [*module.parameters(), *module.buffers()]
                    if t.is_floating_point() and t.dtype != torch.float32})
    if found:
        module.float()
    return found


def _find_state_dict(obj: Mapping, torch: Any) -> dict[str, Any] | None:
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in _CHECKPOINT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return None


def _build_from_arch(arch: str, state: dict[str, Any], path: Path, torch: Any) -> tuple[Any, list[str], str | None]:
    """Build the model with the --arch factory and load `state` into it. Returns the model, the
    pruned parameters whose masks were merged, and the key prefix removed (if any)."""
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise LoadError(f"--arch {arch!r} must be 'package.module:factory' (a callable that returns the nn.Module)")
    cwd = str(Path.cwd())
    sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"--arch {arch}: cannot import {module_name!r} ({first_line(exc)}); set PYTHONPATH to its folder") from None
    except Exception as exc:  # the module itself raised while importing
        raise LoadError(f"--arch {arch}: importing {module_name!r} failed ({type(exc).__name__}: {first_line(exc)}); fix that module") from None
    finally:
        if cwd in sys.path:
            sys.path.remove(cwd)
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        raise LoadError(f"--arch {arch}: {module_name!r} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as exc:
        raise LoadError(f"--arch {arch}: calling {attr}() failed: {first_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise LoadError(f"--arch {arch}: {attr}() returned {type(model).__name__}, not an nn.Module")
    state, merged = merge_pruning_masks(state)
    expected = set(model.state_dict())
    state, stripped = _strip_wrapper_prefix(state, expected)
    missing = [k for k in model.state_dict() if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise LoadError(
            f"state dict {path.name} does not fit --arch {arch}: "
            f"missing keys {missing[:10]}{_more(missing)}, unexpected keys {unexpected[:10]}{_more(unexpected)}; "
            "check that --arch builds the same architecture the weights were trained with"
        )
    own = model.state_dict()
    wrong = [f"{k} {list(v.shape)} (model {list(own[k].shape)})" for k, v in state.items()
             if isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise LoadError(
            f"state dict {path.name} does not fit --arch {arch}: shape mismatch for {', '.join(wrong[:5])}{_more(wrong, 5)}; "
            "check the factory's width/class-count settings"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise LoadError(f"state dict {path.name} does not fit --arch {arch}: {first_line(exc)}") from None
    return model, merged, stripped


def _more(items: list, shown: int = 10) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""


def _strip_wrapper_prefix(state: dict[str, Any], expected: set[str]) -> tuple[dict[str, Any], str | None]:
    """`module.conv.weight` (DataParallel) -> `conv.weight`, only when that makes every key fit."""
    if not state or set(state) <= expected:
        return state, None
    for prefix in ("module.", "model.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) <= expected:
                return stripped, prefix
    return state, None


def merge_pruning_masks(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`x.weight_orig` * `x.weight_mask` -> `x.weight` (torch.nn.utils.prune's saved form).
    Returns the new state dict and the names of the merged parameters."""
    out = dict(state)
    merged = []
    for key in list(state):
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            out[base] = state[key] * state[base + "_mask"]
            del out[key], out[base + "_mask"]
            merged.append(base)
    return out, merged


def make_pruning_permanent(model: Any) -> list[str]:
    """Remove torch.nn.utils.prune reparametrisations (weight = weight_orig * weight_mask) in place."""
    from torch.nn.utils import prune

    done: list[str] = []
    for mod_name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):  # PruningContainer is one too
                prune.remove(module, hook._tensor_name)
                done.append(f"{mod_name}.{hook._tensor_name}" if mod_name else hook._tensor_name)
    return done


def _from_object(obj: Any, path: Path | None, kind: str | None = None) -> SourceModel:
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a core dependency
        onnx = None
    if onnx is not None and isinstance(obj, onnx.ModelProto):
        return _from_onnx_proto(obj, path)
    torch = _import_torch(path)
    if isinstance(obj, torch.export.ExportedProgram):
        names = [s.arg.name for s in obj.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        shapes: dict[str, tuple[int, ...]] = {}
        example = getattr(obj, "example_inputs", None)
        if example:
            args = list(example[0]) + list(example[1].values())
            if len(args) == len(names) and all(isinstance(a, torch.Tensor) for a in args):
                shapes = {n: tuple(a.shape) for n, a in zip(names, args)}
        src = SourceModel("exported-program", path, model=obj, input_names=names, stored_shapes=shapes)
        src.warnings += _nonfinite_warnings(obj.state_dict.items(), torch)
        return src
    if isinstance(obj, torch.jit.ScriptModule):
        schema = obj.forward.schema
        names = [a.name for a in schema.arguments[1:]]
        obj.eval()
        src = SourceModel("torchscript", path, model=obj, input_names=names)
        src.warnings += _nonfinite_warnings(obj.state_dict().items(), torch)
        return src
    if isinstance(obj, torch.nn.Module):
        made = make_pruning_permanent(obj)
        obj.eval()  # recursive: a submodule left in training mode (BatchNorm, Dropout) changes the outputs
        names = _forward_arg_names(obj)
        src = SourceModel(kind or "module", path, model=obj, input_names=names, made_permanent=made)
        src.warnings += _nonfinite_warnings(obj.state_dict().items(), torch)
        return src
    raise UsageError(
        f"cannot export a {type(obj).__name__}; pass a path, an nn.Module, an ExportedProgram, a ScriptModule or an onnx.ModelProto"
    )


def _forward_arg_names(module: Any) -> list[str]:
    params = inspect.signature(module.forward).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]


def _from_onnx(path: Path) -> SourceModel:
    import onnx

    try:
        proto = onnx.load_model(str(path))
    except Exception as exc:
        raise LoadError(f"cannot load ONNX {path}: {first_line(exc)}") from None
    return _from_onnx_proto(proto, path)


# Operands whose values (not only their shapes) decide an output's shape: random verification
# inputs are no valid values for them, and TFLite and ncnn need them constant.
VALUE_OPERANDS: dict[str, dict[int, str]] = {
    "Resize": {2: "scales", 3: "sizes"}, "Upsample": {1: "scales"}, "Reshape": {1: "shape"},
    "Expand": {1: "shape"}, "Tile": {1: "repeats"}, "ConstantOfShape": {0: "shape"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"}, "Pad": {1: "pads"}, "TopK": {1: "K"},
    "OneHot": {1: "depth"}, "Split": {1: "split"}, "Squeeze": {1: "axes"}, "Unsqueeze": {1: "axes"},
}


def value_operand_inputs(graph: Any) -> dict[str, str]:
    """Graph inputs (of an onnx GraphProto) used directly as a VALUE_OPERANDS operand: name ->
    "the scales of Resize node 'r'"."""
    inits = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input} - inits
    found: dict[str, str] = {}
    for node in graph.node:
        for slot, what in VALUE_OPERANDS.get(node.op_type, {}).items():
            if node.op_type == "Resize" and len(node.input) == 2:  # opset 10: (X, scales)
                slot, what = (1, "scales") if slot == 2 else (-1, what)
            if 0 <= slot < len(node.input) and node.input[slot] in inputs:
                label = repr(node.name) if node.name else f"(output {node.output[0]!r})"
                found.setdefault(node.input[slot], f"the {what} of {node.op_type} node {label}")
    return found


def _from_onnx_proto(proto: Any, path: Path | None) -> SourceModel:
    from onnx import numpy_helper

    inits = {i.name for i in proto.graph.initializer}
    names, shapes, partial = [], {}, {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        names.append(inp.name)
        if not inp.type.tensor_type.HasField("shape"):
            continue
        known = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim)
        if all(d is not None for d in known):  # () is a rank-0 (scalar) input: static too
            shapes[inp.name] = known
        elif known:
            partial[inp.name] = known
    _check_declared_shapes(proto, path)
    src = SourceModel("onnx", path, onnx_model=proto, input_names=names, stored_shapes=shapes, partial_shapes=partial,
                      value_inputs=value_operand_inputs(proto.graph))
    bad = []
    for init in proto.graph.initializer:
        try:
            arr = numpy_helper.to_array(init)
        except Exception as exc:  # noqa: BLE001  (dims that do not match its data, a bad data type)
            where = path.name if path is not None else "the ONNX model"
            raise LoadError(f"{where} is not a valid ONNX model: weight {init.name!r} cannot be read "
                            f"({first_line(exc)}); the file is damaged: export it again") from None
        if arr.dtype.kind == "f" and not _all_finite(arr):
            bad.append(init.name)
    _refuse_bad_weights(bad, [])
    _check_ir_round_trip(proto, path)
    return src


def _check_declared_shapes(proto: Any, path: Path | None) -> None:
    """A declared dimension that is negative or a shape larger than MAX_ELEMENTS is a damaged file
    (the passes would size their tables by it)."""
    import math

    from edgepack.check_artifact import MAX_ELEMENTS

    for v in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
            where = path.name if path is not None else "the ONNX model"
            raise LoadError(f"{where} is not a valid ONNX model: value {v.name[:60]!r} declares the impossible shape "
                            f"{dims[:8]}; the file is damaged: export it again")


def _check_ir_round_trip(proto: Any, path: Path | None) -> None:
    """Every pass works on onnx_ir's model and writes it back: a file it cannot write back (text that
    is not UTF-8, which protobuf's proto2 fields let through) is refused here, in one line, instead
    of failing in a pass."""
    import logging

    import onnx_ir as ir

    where = path.name if path is not None else "the ONNX model"
    warned: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("onnx_ir")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False  # (its warnings would print on stderr)
    try:
        ir.to_proto(ir.from_proto(proto))
    except Exception as exc:  # noqa: BLE001  (SerdeError wrapping the real cause)
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise LoadError(f"{where} is not a valid ONNX model ({type(cause).__name__}: {first_line(cause)}); "
                        "the file is damaged: export it again") from None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    invalid = [w for w in warned if "model is invalid" in w.lower()]
    if invalid:  # e.g. a node input that no node, initializer or graph input provides
        raise LoadError(f"{where} is not a valid ONNX model ({first_line(invalid[0])[:200]}); the file is damaged: "
                        "export it again")


def _all_finite(arr: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(arr).all())


def _nonfinite_warnings(items: Any, torch: Any) -> list[str]:
    """Non-finite weights or a negative BatchNorm variance are an error naming the parameters: every
    output of such a model is NaN/Inf, and no artifact of it can be right."""
    items = list(items)
    bad = [k for k, v in items if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    negative = [k for k, v in items if k.endswith("running_var") and isinstance(v, torch.Tensor) and bool((v < 0).any())]
    _refuse_bad_weights(bad, negative)
    return []


def _refuse_bad_weights(nonfinite: list[str], negative_var: list[str]) -> None:
    if nonfinite:
        raise UsageError(f"NaN or Inf in weights {nonfinite[:5]}{' ...' if len(nonfinite) > 5 else ''}: every output "
                         "would be NaN/Inf; fix or retrain those parameters before exporting")
    if negative_var:
        raise UsageError(f"negative BatchNorm variance in {negative_var[:5]}: sqrt of a negative gives NaN; fix those "
                         "running_var buffers (a variance is >= 0) before exporting")


def _import_torch(path: Path | None) -> Any:
    try:
        import torch
    except ImportError:
        what = f"{path} is a PyTorch file" if path else "a PyTorch model was given"
        raise UsageError(f"{what} and torch is not installed; pip install 'edgepack[torch]' (or export to ONNX first)") from None
    return torch
