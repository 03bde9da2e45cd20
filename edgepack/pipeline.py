"""The export pipeline, in order. Reading `run_export` tells the whole story of an export:

1. load the model (any input format) and resolve input shapes;
2. build the verification set and run the reference (PyTorch, or ONNX Runtime unoptimized);
3. convert to ONNX (PyTorch inputs) -- the one intermediate form;
4. graph passes on ONNX (`graph_passes`): fold_shape_subgraphs, cleanup_graph, fold_batchnorm, cleanup_graph,
   remove_pruned_channels, cleanup_graph;
5. calibrate once (int8): the activation ranges every int8 exporter reads;
6. every requested format x precision (the table in `edgepack.formats`): export, verify against
   the reference;
7. estimate each artifact on the target;
8. compare each quantized artifact with its fp32 sibling (measured here, estimated on the target;
   XNNPACK delegation of TFLite artifacts): `speed_check`; write verify.npz and report.json.

`run_export` is `prepare_export` (steps 1-4) then `write_export` (5-8); `edgepack sweep` calls them
apart, to build many artifacts from one prepared graph and one calibration.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgepack import report as report_mod
from edgepack.calib import check_finite, load_samples
from edgepack.converters import PassResult
from edgepack.converters.cleanup_graph import cleanup_graph
from edgepack.artifacts import EvalSet, ExportContext, build_artifact
from edgepack.artifacts.context import fp32_proto_of, settle_deflated
from edgepack.calibrate import CALIBRATION_NAME, Calibration, calibrate
from edgepack.converters.quantize_int8 import QUANTIZED_OPS
from edgepack.converters.fold_batchnorm import fold_batchnorm
from edgepack.converters.fold_constant_affine import fold_constant_affine
from edgepack.converters.fold_shape_subgraphs import fold_shape_subgraphs
from edgepack.converters.node_names import label
from edgepack.converters.remove_pruned_channels import remove_pruned_channels
from edgepack.devices import DeviceProfile, load_profile
from edgepack.devices.estimate import describe_precision_gain, report_estimate
from edgepack.speed_check import check_speed
from edgepack.formats import artifact_precisions
from edgepack.errors import (
    first_line,
    EdgepackError, InputShapeError, LoadError, UnsupportedError, UsageError, VerificationFailed,
)
from edgepack.fsutil import export_output
from edgepack.load import SourceModel, load_source
from edgepack.model_stats import count_macs, count_params
from edgepack.normalization import image_preprocessing
from edgepack.options import ExportOptions, InputSpec, Preprocessing
from edgepack.runtimes import get_runtime, work_threads
from edgepack.runtimes.ort import ort_message
from edgepack.verify import (
    AGREEMENT_FLOOR, VERIFY_NAME, VerificationSet, batch_size, check_agreement, compare, make_verification_set,
    per_call, run_all, save_verification, stack_outputs,
)


def graph_passes(options: ExportOptions) -> list[tuple[str, Callable[[ir.Model], PassResult]]]:
    """The graph passes, in order. (round_channels None = not resolved from a target profile: 1.)"""
    prune: Callable[[ir.Model], PassResult] = functools.partial(
        remove_pruned_channels, approx=options.prune.prune_approx, round_channels=options.prune.round_channels or 1
    )
    if not options.prune.prune:
        prune = _disabled("remove_pruned_channels", "--no-prune")
    return [
        ("fold_shape_subgraphs", fold_shape_subgraphs),
        ("cleanup_graph", cleanup_graph),
        ("fold_batchnorm", fold_batchnorm),
        ("cleanup_graph", cleanup_graph),
        ("remove_pruned_channels", prune),
        ("cleanup_graph", cleanup_graph),
    ]


def int8_graph(fp32_proto: Any, options: ExportOptions) -> tuple[ir.Model | None, list[PassResult]]:
    """The float graph that every int8 artifact (ONNX, TFLite, ncnn) quantizes and calibration
    measures: the processed graph with the rewrites that only int8 needs (exact in float, but not
    bit-exact: folding scales into weights moves fp32 rounding by ~1e-4 over a deep network, which
    the fp32 artifacts' floor would rightly catch). None when nothing changed."""
    if not options.calibration.fold_affine:
        return None, [_disabled("fold_constant_affine", "--no-fold-affine")(None)]
    model = ir.serde.deserialize_model(fp32_proto)
    passes = [fold_constant_affine(model)]
    if not passes[0].modified:
        return None, passes
    passes.append(cleanup_graph(model))
    return model, passes


def _disabled(name: str, flag: str) -> Callable[[ir.Model], PassResult]:
    return lambda model: PassResult(name, False, skipped=[{"node": "*", "why": f"disabled by {flag}"}])


class Steps:
    """Times each step and prints one line per finished step to `console` (stderr) when given: live
    on a terminal; otherwise (logs, pipes) held back and printed once the export has finished, so a
    failed export leaves only its one-line error on stderr. Warnings are printed at once."""

    def __init__(self, console: Any | None) -> None:
        self.console = console
        self.live = bool(getattr(console, "is_terminal", False))
        self.held: list[str] = []
        self.timings: dict[str, float] = {}
        self.warned: set[str] = set()

    @contextlib.contextmanager
    def __call__(self, key: str, label: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.timings[key] = round(self.timings.get(key, 0.0) + elapsed, 3)
        if self.console is not None:
            line = f"[dim]{elapsed:6.2f} s[/]  {escape(label)}"
            if self.live:
                self.console.print(line)
            else:
                self.held.append(line)

    def finish(self) -> None:
        """Print the held-back step lines (non-terminal console) after a finished export."""
        for line in self.held:
            self.console.print(line)
        self.held.clear()

    def warn(self, text: str) -> None:
        if text in self.warned:
            return
        self.warned.add(text)
        if self.console is not None:
            self.console.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)


def escape(text: str) -> str:
    """Messages hold lists like ['conv1.weight']; rich must not read brackets as markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def run_export(model_or_path: Any, options: ExportOptions, console: Any | None = None) -> dict:
    """`prepare_export` (steps 1-4) then `write_export` (5-8). The export is built in a staging folder
    beside -o and swapped in whole when it is complete (report.json written): an error, SIGINT,
    SIGTERM or kill -9 leaves -o as it was (edgepack.fsutil.export_output)."""
    load_profile(options.target.target)  # an unknown target is refused before any folder is touched
    steps = Steps(console)
    total_start = time.perf_counter()
    with export_output(options.output_dir) as out_dir:
        prep = prepare_export(model_or_path, options, steps)
        return write_export(prep, out_dir, steps, total_start)


@dataclass
class Prepared:
    """Steps 1-4 of an export (load, reference, ONNX, graph passes) and what the artifacts are built
    from. `edgepack sweep` makes one per model, input shape and channel rounding and builds many
    artifacts from it; it pickles without the source model (the processed graph as ONNX bytes)."""

    options: ExportOptions
    profile: DeviceProfile
    round_source: str
    source: SourceModel
    specs: list[InputSpec]
    shape_sources: dict[str, str]
    calib: dict[str, np.ndarray] | None
    vset: VerificationSet
    reference: list[np.ndarray]
    model: ir.Model
    exporter: str | None
    fallback: str | None
    passes: list[PassResult]
    warnings: list[str]
    eval_set: EvalSet | None
    source_params: int | None = None  # the PyTorch (or source ONNX) parameter count, before any pass
    preprocessing: dict | None = None  # report.preprocessing: what was applied to the samples, and why

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {s.name: s.shape for s in self.specs}

    def __getstate__(self) -> dict:
        from edgepack.converters.export_onnx import to_proto

        state = dict(self.__dict__)
        state["source"] = dataclasses.replace(self.source, model=None, onnx_model=None)
        state["model"] = to_proto(self.model).SerializeToString()
        return state

    def __setstate__(self, state: dict) -> None:
        import onnx

        state["model"] = ir.from_proto(onnx.ModelProto.FromString(state["model"]))
        self.__dict__.update(state)


def prepare_export(model_or_path: Any, options: ExportOptions, steps: Steps, passes: bool = True) -> Prepared:
    """Steps 1-4 (without the graph passes when `passes` is False: a sweep runs them per channel
    rounding on copies)."""
    profile = load_profile(options.target.target)
    options, round_source = _with_profile_defaults(options, profile)

    with steps("load", "load model"):
        source = load_source(model_or_path, allow_pickle=options.source.allow_pickle, arch=options.source.arch)
    warnings = list(source.warnings)
    if source.made_permanent:
        warnings.append(f"made {len(source.made_permanent)} pruning reparametrisation(s) permanent: {source.made_permanent[:5]}")
    for w in warnings:
        steps.warn(w)
    specs, shape_sources = resolve_inputs(source, options.source.input_shape, profile)
    _refuse_random_values(source, options.calibration.calib is not None)
    shapes = {s.name: s.shape for s in specs}
    _check_memory(shapes, options.verify.verify_samples + 2)

    with steps("reference", f"reference outputs ({'PyTorch' if source.is_torch else 'ONNX Runtime, optimizations off'})"):
        calib_path = options.calibration.calib
        preprocessing, pre_source = options.preprocessing, "flags"
        if calib_path is not None and calib_path.is_dir():  # pixels: the normalisation applied, and where it came from
            preprocessing, pre_source, note = image_preprocessing(options.preprocessing, source.model)
            if note:
                warnings.append(note)
        calib = load_samples(calib_path, shapes, preprocessing) if calib_path else None
        if calib is not None and not calib_path.is_dir() and (options.preprocessing.resize or options.preprocessing.crop):
            warnings.append("--resize/--crop apply to image folders; the .npy/.npz calibration arrays are used as given")
        v = options.verify
        vset = make_verification_set(shapes, seed=v.seed, n_random=v.verify_samples, calib=calib,
                                     holdout_fraction=v.holdout_fraction)
        vset, reference = _finite_reference(source, specs, vset, warnings)

    with steps("to_onnx", "convert to ONNX"):
        model, exporter, fallback = _to_onnx(source, specs, vset, len(reference), options.target.opset)
    if fallback:
        steps.warn(f"dynamo exporter failed ({fallback}); used the TorchScript exporter")
    prep = Prepared(options, profile, round_source, source, specs, shape_sources, calib, vset, reference,
                    model, exporter, fallback, [], warnings, None, _source_params(source, model),
                    _preprocessing_record(preprocessing, pre_source, calib_path is not None and calib_path.is_dir()))
    if passes:
        run_graph_passes(prep, steps)
    prep.eval_set = _load_eval(options, specs, source) if options.verify.eval_data else None
    return prep


def run_graph_passes(prep: Prepared, steps: Steps) -> None:
    """Step 4 on `prep.model`, in place (a sweep runs it on a copy of one converted graph per rounding)."""
    for pass_name, graph_pass in graph_passes(prep.options):
        with steps(f"pass:{pass_name}", pass_name):
            prep.passes.append(graph_pass(prep.model))
    left = [n.op_type for n in prep.model.graph if n.op_type == "BatchNormalization"]
    if left:
        prep.warnings.append(f"{len(left)} BatchNormalization node(s) could not be folded; see passes")


def calibrate_export(prep: Prepared, out_dir: Path, steps: Steps, warnings: list[str],
                     fp32_proto: Callable[[], Any] | None = None) -> Calibration | None:
    """Step 5: the int8 ranges (None when no int8 artifact needs them), written to OUTDIR/calibration.json."""
    # The calibration file is this export's: one left in the folder by an earlier export (another
    # model, other data or method) must never be taken for it.
    (out_dir / CALIBRATION_NAME).unlink(missing_ok=True)
    if "int8" not in prep.options.precisions or _already_quantized(prep.model):
        return None
    c = prep.options.calibration
    proto = fp32_proto() if fp32_proto is not None else fp32_proto_of(prep.model)
    with steps("int8_graph", "the graph int8 quantizes"):
        folded, int8_passes = int8_graph(proto, prep.options)
        if folded is not None:
            proto = fp32_proto_of(folded)
    with steps("calibrate", f"calibrate int8 ranges ({c.calib_method})"):
        feeds = _calibration_feeds(prep.calib, prep.vset, prep.shapes, prep.options, warnings)
        cal = calibrate(proto, feeds, c.calib_method, out_dir / CALIBRATION_NAME,
                        equalize=c.equalize, correct_bias=c.correct_bias)
    # the int8 exporters quantize the PTQ passes' graph, else the folded one, else the fp32 graph
    return dataclasses.replace(cal, model=cal.model if cal.model is not None else (proto if folded is not None else None),
                               graph_passes=[p.to_json() for p in int8_passes])


def _already_quantized(model: ir.Model) -> bool:
    return any(n.op_type in QUANTIZED_OPS for n in model.graph)


MEASURE: Any = "measure"  # write_export's default calibration: measure it in this export


def write_export(prep: Prepared, out_dir: Path, steps: Steps, total_start: float, calibration: Any = MEASURE,
                 cells: list[tuple[str, str]] | None = None, estimate_on: list[DeviceProfile] | None = None) -> dict:
    """Steps 5-8 into `out_dir`: calibration (or the given one: a sweep measures it once for many
    cells), every format x precision of the options (or only `cells`, a sweep's (format, precision)
    pairs) built and verified, estimated on the target (and on `estimate_on`: each artifact's
    `estimates` by profile name), quantized artifacts compared with fp32; verify.npz and report.json."""
    options, profile, source, model, vset = prep.options, prep.profile, prep.source, prep.model, prep.vset
    v = options.verify
    warnings = list(prep.warnings)
    output_names = [v.name for v in model.graph.outputs]
    save_verification(out_dir / VERIFY_NAME, vset, prep.reference, output_names)
    already_quantized = _already_quantized(model)
    precisions = _precisions(options, already_quantized, warnings)
    warnings += [w for w in (describe_precision_gain(profile, p) for p in precisions) if w]
    eval_set = prep.eval_set
    ctx = ExportContext(model, options.source.name or _default_name(source), out_dir, vset, prep.reference, output_names,
                        options, None, already_quantized, eval_set)
    ctx.calibration = (calibrate_export(prep, out_dir, steps, warnings, lambda: ctx.fp32_proto) if calibration is MEASURE
                       else calibration)
    if cells is None:
        cells = [(fmt, precision) for fmt in options.target.formats
                 for precision in artifact_precisions(fmt, precisions, options.precision.ncnn_fp32)]
    artifacts = []
    with tempfile.TemporaryDirectory(prefix="edgepack-work-") as work:
        ctx.work_dir = Path(work)
        for fmt, precision in cells:
            with steps(f"artifact:{fmt}.{precision}", f"export + verify {fmt} {precision}"):
                artifacts.append(build_artifact(ctx, fmt, precision))
    _int8_agreement(ctx, artifacts)
    _name_modules(model, artifacts)
    with steps("estimate", f"estimate latency and memory on {profile.name}"):
        settle_deflated(ctx)  # the artifacts' deflated sizes, computed in the background meanwhile
        for art in artifacts:
            art["estimate"] = report_estimate(out_dir, art, profile)
            if art["estimate"].get("fits_memory") is False:
                art["warning"] = ((art.get("warning") + "; ") if art.get("warning") else "") + (
                    f"estimated peak memory {art['estimate']['peak_memory_mb']:.0f} MB exceeds {profile.name}'s "
                    f"{profile.memory.ram_mb} MB budget")
            if estimate_on:
                art["estimates"] = {p.name: report_estimate(out_dir, art, p) for p in estimate_on}
    for art in artifacts:
        if art.get("warning"):
            warnings.append(f"{art['path']}: {art['warning']}")
            steps.warn(warnings[-1])
    with steps("speed", "compare quantized artifacts with fp32 (XNNPACK delegation, latency)"):
        warnings += check_speed(artifacts, out_dir, profile.name, profile.cpu)

    report = {
        "schema_version": report_mod.SCHEMA_VERSION,
        "provenance": report_mod.provenance({"verification": options.verify.seed}),
        "model": {
            "name": ctx.name,
            "source_path": str(source.path) if source.path else None,
            "source_format": source.kind,
            "exporter": prep.exporter,
            "exporter_fallback_reason": prep.fallback,
            "opset": options.target.opset,
            "params": prep.source_params,
            "params_after_passes": count_params(model),
            "macs": count_macs(model),
            "inputs": [
                {"name": s.name, "shape": list(s.shape), "shape_source": prep.shape_sources[s.name]} for s in prep.specs
            ],
            "pruning_made_permanent": source.made_permanent,
        },
        "target": {"name": profile.name, "description": profile.description, "cpu": profile.cpu,
                   "round_channels": options.prune.round_channels, "round_channels_source": prep.round_source},
        "preprocessing": prep.preprocessing,
        "passes": [p.to_json() for p in prep.passes],
        "verification": {
            "file": VERIFY_NAME,
            "source": vset.source,
            "samples": vset.count,
            "seed": vset.seed,
            "holdout_fraction": v.holdout_fraction if vset.calibration_indices is not None else None,
            "left_for_calibration": None if vset.calibration_indices is None else int(len(vset.calibration_indices)),
            "reference": "pytorch" if source.is_torch else "onnxruntime (optimizations off)",
        },
        "calibration": (ctx.calibration.to_report(str(options.calibration.calib), v.seed + 1)
                        if ctx.calibration is not None else None),
        "evaluation": eval_set.to_report() if eval_set is not None else None,
        "artifacts": artifacts,
        "warnings": warnings,
        "timings_s": {**steps.timings, "total": round(time.perf_counter() - total_start, 3)},
        "threads": {"reference_and_verification": work_threads(), "note": "CPUs less the load average at export time"},
    }
    for w in warnings:  # every warning reaches the console, not only report.json
        steps.warn(w)
    report["ok"] = all(a["ok"] for a in artifacts)
    report["exit_code"] = exit_code_for(artifacts)
    report_mod.write_report(report, out_dir)
    steps.finish()
    return report


def _with_profile_defaults(options: ExportOptions, profile: DeviceProfile) -> tuple[ExportOptions, str]:
    """Options the target profile fills in when the user did not set them: --round-channels."""
    if options.prune.round_channels is not None:
        return options, "flag"
    return options.replace("prune", round_channels=profile.round_channels), f"profile:{profile.name}"


def exit_code_for(artifacts: list[dict]) -> int:
    """3 if any artifact failed verification, else 4 if any format/op was unsupported, else the
    first failed artifact's code, else 0."""
    codes = [a["exit_code"] for a in artifacts if not a["ok"]]
    if not codes:
        return 0
    for preferred in (VerificationFailed.exit_code, UnsupportedError.exit_code):
        if preferred in codes:
            return preferred
    return codes[0]


# ---------------------------------------------------------------- step 1: inputs


def resolve_inputs(source: SourceModel, given: tuple[InputSpec, ...], profile: DeviceProfile) -> tuple[list[InputSpec], dict[str, str]]:
    """Shape of every model input: from --input-shape, else stored in the model, else the profile."""
    names = list(source.input_names) or [s.name or "input" for s in given] or ["input"]
    shapes: dict[str, tuple[int, ...]] = {}
    origin: dict[str, str] = {}
    for spec in given:
        if spec.name is None:
            if len(names) != 1:
                raise UsageError(
                    f"the model takes {len(names)} inputs ({', '.join(names)}); name each: "
                    + " ".join(f"--input-shape {n}:1x3x224x224" for n in names)
                )
            key = names[0]
        elif spec.name not in names:
            raise UsageError(f"--input-shape names input {spec.name!r}; the model's inputs are: {', '.join(names)}")
        else:
            key = spec.name
        if source.kind == "onnx":
            _check_onnx_shape(source, key, spec.shape, "--input-shape gave")
        shapes[key], origin[key] = spec.shape, "flag"
    for key in names:
        if key in shapes:
            continue
        partial = source.partial_shapes.get(key)
        if key in source.stored_shapes:
            shapes[key], origin[key] = source.stored_shapes[key], "model"
        elif partial is not None and partial[0] is None and all(d is not None for d in partial[1:]):
            # an ONNX input with only the batch dimension left open: batch 1
            shapes[key], origin[key] = (1,) + tuple(partial[1:]), "model"
        elif len(names) == 1:
            shape = tuple(profile.default_input_shape)
            if source.kind == "onnx":
                _check_onnx_shape(source, key, shape, f"the {profile.name!r} profile's default shape is")
            shapes[key], origin[key] = shape, f"profile:{profile.name}"
        else:
            raise UsageError(f"no shape for input {key!r}; pass --input-shape {key}:1x3x224x224")
    return [InputSpec(n, shapes[n]) for n in names], origin


def _refuse_random_values(source: SourceModel, has_calib: bool) -> None:
    """An input that sets a shape by its values (Resize scales/sizes, Reshape shape...) cannot be
    fed the random samples edgepack verifies with: say so, instead of blaming the input shape when
    the model then fails on them."""
    if not source.value_inputs or has_calib:
        return
    name, what = next(iter(source.value_inputs.items()))
    raise UsageError(
        f"input {name!r} is {what}: its values set a shape, so the random samples edgepack verifies with are not "
        f"valid for it (and TFLite and ncnn need it constant); store {name!r} in the model as an initializer holding "
        f"its value, or pass --calib with real values for every input"
    )


def _check_onnx_shape(source: SourceModel, key: str, shape: tuple[int, ...], where: str) -> None:
    """An ONNX model's static dims are fixed: a shape that contradicts them is an input error."""
    known = source.stored_shapes.get(key) or source.partial_shapes.get(key)
    if known is None:
        return
    fits = len(known) == len(shape) and all(k is None or k == n for k, n in zip(known, shape))
    if not fits:
        expected = "x".join("N" if k is None else str(k) for k in known)
        example = "x".join("1" if k is None else str(k) for k in known)
        raise InputShapeError(
            f"input {key!r}: {where} {list(shape)}; the model expects {expected}: pass --input-shape {key}:{example}"
        )


# ---------------------------------------------------------------- step 2: reference


def _reference_outputs(source: SourceModel, specs: list[InputSpec], vset: VerificationSet) -> list[np.ndarray]:
    names = [s.name for s in specs]
    threads = work_threads()
    if source.is_torch:
        session = get_runtime("torch").load(source.model, input_names=names, threads=threads)
    else:
        try:
            session = get_runtime("onnxruntime").load(
                _with_static_inputs(source.onnx_model, specs).SerializeToString(), optimize=False, threads=threads
            )
        except EdgepackError:
            raise
        except Exception as exc:
            raise _ort_load_error(source.path or "the ONNX model", exc) from None

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(session.run(feed).values())

    try:
        return run_all(run, vset)
    except EdgepackError:
        raise
    except Exception as exc:
        if isinstance(exc, TypeError) and "model output of type" in str(exc):  # not a shape problem
            raise UnsupportedError(f"{first_line(exc)}; return a tensor or a tuple/list/dict of tensors from forward()") from None
        shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in specs)
        stored = ", ".join(f"{k} {list(v)}" for k, v in source.stored_shapes.items())
        hint = f" (the model records {stored})" if stored else ""
        raise InputShapeError(
            f"the model failed on input shape(s) {shapes}{hint}: {first_line(exc)}; pass --input-shape with the shape the model expects"
        ) from None


ACTIVATION_COPIES = 16  # a rough floor on live activations per sample, as multiples of the input size


def _check_memory(shapes: dict[str, tuple[int, ...]], samples: int) -> None:
    """Refuse, before any work, input shapes whose verification data and activations cannot fit in
    this machine's available memory (an estimate: the inputs of every verification sample plus
    ACTIVATION_COPIES input-sized activations)."""
    import math

    per_sample = sum(math.prod(s) for s in shapes.values()) * 4
    need = per_sample * (samples + ACTIVATION_COPIES)
    available = _available_memory()
    if available is not None and need > 0.8 * available:
        dims = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        raise UsageError(f"input shape(s) {dims} need about {need / 2**30:.1f} GiB for verification and activations "
                         f"(estimate), more than the {available / 2**30:.1f} GiB available here; pass a smaller --input-shape")


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _finite_reference(source: SourceModel, specs: list[InputSpec], vset: VerificationSet,
                      warnings: list[str]) -> tuple[VerificationSet, list[np.ndarray]]:
    """The reference outputs, finite. Non-finite outputs on random inputs can be correct (log, sqrt
    or pow of negatives): drop edge inputs that give them, retry once with inputs in those ops'
    domain (|N(0,1)| + 0.1); non-finite outputs on the user's own data are an error."""
    reference = _reference_outputs(source, specs, vset)

    def finite_rows(outs: list[np.ndarray]) -> np.ndarray:
        return np.all([np.isfinite(o.reshape(o.shape[0], -1)).all(axis=1) for o in outs], axis=0)

    ok = finite_rows(reference)
    if ok.all():
        return vset, reference
    if vset.calibration_indices is not None:
        raise UnsupportedError(f"the reference model gives NaN/Inf on {int((~ok).sum())} of the {vset.count} held-out "
                               "--calib samples; fix the model (or its data) so it computes finite outputs")
    n = vset.count - vset.edge
    if ok[:n].all():  # only edge inputs: judge without them
        keep = ok.copy()
        warnings.append(f"the reference is NaN/Inf on {int((~ok[n:]).sum())} edge input(s) (zeros / large magnitudes); "
                        "verified without them")
        vset = VerificationSet({k: v[keep] for k, v in vset.inputs.items()}, vset.source, vset.seed,
                               edge=int(keep[n:].sum()))
        return vset, [r[keep] for r in reference]
    rng = np.random.default_rng(vset.seed)
    positive = {k: (np.abs(rng.standard_normal(v[:n].shape)) + 0.1).astype(np.float32) for k, v in vset.inputs.items()}
    retry = VerificationSet(positive, "random-positive (|N(0,1)| + 0.1)", vset.seed)
    reference = _reference_outputs(source, specs, retry)
    if not finite_rows(reference).all():
        raise UsageError("the reference model gives NaN/Inf on random inputs, even positive ones; pass --calib with "
                         "real samples so verification runs on data the model is defined for")
    warnings.append("the reference is NaN/Inf on N(0,1) inputs (log, sqrt or pow of negatives?); verified on "
                    "positive random inputs |N(0,1)| + 0.1 instead; pass --calib for real data")
    return retry, reference


def _ort_load_error(what: Any, exc: BaseException) -> EdgepackError:
    """ONNX Runtime refusing a model: an op it lacks is unsupported (exit 4), anything else bad input."""
    text = ort_message(exc)
    if any(k in text for k in ("NOT_IMPLEMENTED", "not a registered function/op", "Unsupported model IR version", "Unsupported opset")):
        return UnsupportedError(f"ONNX Runtime cannot load {what}: {text}; re-export it with standard ONNX ops, an opset and an IR version that ONNX Runtime supports")
    return LoadError(f"ONNX Runtime cannot load {what}: {text}; check the model with onnx.checker.check_model")


def _with_static_inputs(proto: Any, specs: list[InputSpec]) -> Any:
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    by_name = {s.name: s.shape for s in specs}
    for inp in proto.graph.input:
        if inp.name not in by_name:
            continue
        dims = inp.type.tensor_type.shape.dim
        shape = by_name[inp.name]
        if len(dims) != len(shape):
            raise InputShapeError(f"input {inp.name!r} has {len(dims)} dimensions; the shape used is {list(shape)}: pass --input-shape")
        for d, n in zip(dims, shape):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != n:
                raise InputShapeError(f"input {inp.name!r} dimension is {d.dim_value}; the shape used is {list(shape)}: pass --input-shape")
            d.Clear()
            d.dim_value = n
    return proto


# ---------------------------------------------------------------- step 3: to ONNX


def _to_onnx(source: SourceModel, specs: list[InputSpec], vset: VerificationSet, n_outputs: int, opset: int) -> tuple[ir.Model, str | None, str | None]:
    if not source.is_torch:
        return ir.from_proto(_with_static_inputs(source.onnx_model, specs)), None, None
    from edgepack.converters.torch_to_onnx import torch_to_onnx

    args = tuple(vset.inputs[s.name][0, ...].copy() for s in specs)  # numpy: the converter makes tensors
    out_names = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    result = torch_to_onnx(source.model, source.kind, args, [s.name for s in specs], out_names, opset)
    return ir.from_proto(result.model_proto), result.exporter, result.fallback_reason


# ---------------------------------------------------------------- step 5: artifacts


def _precisions(options: ExportOptions, already_quantized: bool, warnings: list[str]) -> tuple[str, ...]:
    """What to build. An already-quantized model keeps its own quantization: it is exported as is
    (labelled int8) and not quantized again or cast to fp16."""
    if not already_quantized:
        return options.precisions
    dropped = [p for p in options.precisions if p not in ("fp32", "int8")]
    warnings.append("the model is already quantized (Q/DQ or integer ops): exported with its own quantization as int8"
                    + (f"; not converted to {', '.join(dropped)}" if dropped else ""))
    return ("int8",)


def _calibration_feeds(calib: dict[str, np.ndarray] | None, vset: VerificationSet, shapes: dict[str, tuple[int, ...]],
                       options: ExportOptions, warnings: list[str]) -> list[dict[str, np.ndarray]]:
    """The calibration samples: the part of --calib that verification does not hold out, in a
    seeded shuffle, at most --calib-samples of them."""
    from edgepack.calib import RECOMMENDED_SAMPLES

    assert calib is not None and vset.calibration_indices is not None  # --int8 requires --calib (options)
    order = np.random.default_rng(options.verify.seed + 1).permutation(vset.calibration_indices)
    if options.calibration.calib_samples is not None:
        order = order[: options.calibration.calib_samples]
    batch = batch_size(shapes)
    n = (len(order) // batch) * batch
    if n == 0:
        raise UsageError(f"--calib leaves {len(order)} sample(s) for calibration after the 20% verification hold-out; "
                         f"give at least {batch} more")
    if n < RECOMMENDED_SAMPLES:
        warnings.append(f"only {n} calibration samples (after holding out {vset.count} for verification); "
                        f"{RECOMMENDED_SAMPLES} or more are recommended for stable int8 ranges")
    return [{name: per_call(calib[name][order[i : i + batch]], tuple(shapes[name])) for name in shapes} for i in range(0, n, batch)]


def _int8_agreement(ctx: ExportContext, artifacts: list[dict]) -> None:
    """Each non-ONNX int8 artifact's agreement with the int8 ONNX from the same calibration; a TFLite
    int8 with the same float nodes as that ONNX (when it met its floor) must agree to
    verify.AGREEMENT_FLOOR, else it fails, even if it met its own floor against the reference."""
    base = next((a for a in artifacts if a["format"] == "onnx" and a["precision"] == "int8" and a["ok"]), None)
    if base is None:
        return
    vset = ctx.vset.in_range()
    reference = run_all(ctx.runner(base), vset)
    for art in artifacts:
        if art["precision"] == "int8" and art["format"] != "onnx" and art["ok"]:
            try:
                metrics = compare(reference, stack_outputs(ctx.outputs(art, vset.feeds())), ctx.output_names)
            except EdgepackError as exc:  # a runtime crash in its child: the artifact was verified, this is extra
                art["agreement_with_onnx_int8"] = {"error": first_line(exc)}
                continue
            art["agreement_with_onnx_int8"] = {**{k: metrics.get(k) for k in ("max_abs_error", "cosine", "top1_agreement",
                                                                              "worst_slice")},
                                               "min_cosine": AGREEMENT_FLOOR}
            # Judged for TFLite with the ONNX int8's float nodes: the same quantized model. ncnn's int8
            # rounds only conv and inner-product inputs (its other layers run fp32): reported only.
            same_model = art["format"] == "tflite" and sorted(art.get("float_nodes") or []) == sorted(base.get("float_nodes") or [])
            art["agreement_with_onnx_int8"]["judged"] = same_model
            if not same_model:
                continue
            try:
                check_agreement(metrics)
            except VerificationFailed as exc:
                art["ok"], art["error"], art["exit_code"] = False, str(exc), exc.exit_code


def _name_modules(model: ir.Model, artifacts: list[dict]) -> None:
    """The PyTorch module beside each ONNX node name an artifact entry lists (float_modules beside
    float_nodes), so the report names layers the user can find in their code."""
    modules = {n.name: label(n) for n in model.graph if n.name}
    for art in artifacts:
        if art.get("float_nodes"):
            art["float_modules"] = [modules.get(n, n) for n in art["float_nodes"]]


def _load_eval(options: ExportOptions, specs: list[InputSpec], source: SourceModel) -> EvalSet:
    """--eval DATA.npz (edgepack.evaluate: `x` or one array per input, labels `y`); scores the reference too."""
    from edgepack.evaluate import load_eval_arrays, load_metric

    path, metric = options.verify.eval_data, options.verify.eval_metric
    inputs, y = load_eval_arrays(path, specs, metric is not None)
    for name, x in inputs.items():  # after the cast: a float64 beyond float32's range is Inf here
        check_finite(x, f"--eval {path} {'x' if len(inputs) == 1 else name}")
    first, rest = specs[0], specs[1:]
    eval_set = EvalSet(path, inputs[first.name], y, first.name, first.shape, metric=metric,
                       metric_fn=load_metric(metric) if metric else None,
                       more_inputs={s.name: (inputs[s.name], s.shape) for s in rest})
    names = [s.name for s in specs]
    session = (get_runtime("torch").load(source.model, input_names=names) if source.is_torch else
               get_runtime("onnxruntime").load(_with_static_inputs(source.onnx_model, specs).SerializeToString(), optimize=False))
    eval_set.reference_top1 = eval_set.accuracy(lambda feed: list(session.run(feed).values()))
    return eval_set


def _preprocessing_record(preprocessing: Preprocessing, source: str, image_folder: bool) -> dict | None:
    """report.preprocessing: what was applied (for an image folder always, raw pixels included) and its source."""
    if image_folder:
        preprocessing = dataclasses.replace(preprocessing, layout=preprocessing.layout or "nchw")
    record = preprocessing.to_json()
    return None if record is None else {**record, "source": source}


def _source_params(source: SourceModel, model: ir.Model) -> int:
    """The source model's parameter count: PyTorch's own (BatchNorm included) for a torch model, else
    the ONNX graph's before any pass."""
    parameters = getattr(source.model, "parameters", None)
    if callable(parameters):
        with contextlib.suppress(Exception):  # a model whose parameters() cannot be listed: the graph's count
            return int(sum(p.numel() for p in parameters()))
    return count_params(model)


def _default_name(source: SourceModel) -> str:
    if source.path is not None:  # the file name less its suffix: ch_ppocr_mobile_v2.0_cls_infer.onnx keeps its "v2.0"
        return source.path.stem if source.path.suffix else source.path.name
    return type(source.model).__name__.lower() if source.model is not None else "model"
