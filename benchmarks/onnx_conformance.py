"""The ONNX project's own backend node tests, each node exported alone by edgepack and run in the
artifact's runtime (LiteRT for TFLite, ncnn for ncnn), compared with the test's expected outputs.

    python benchmarks/onnx_conformance.py [--formats tflite,ncnn] [--only SUBSTR] [--list-eligible]
                                          [--details out.tsv] [--timeout 60]

How the cases are made: onnx (pinned: ONNX_VERSION below) no longer ships the node cases' data, so
`onnx.backend.test.case.node.collect_testcases(None)` regenerates them (model + inputs + expected
outputs) into a temporary folder. A case is eligible when every graph input and output is a float32
tensor with a static shape (as given), or, for the "weights as constants" run, when its first input
and every output are (every input after the first then becomes an initializer holding the test's own
value; in the "as given" run, only the inputs whose values set a shape (Resize scales/sizes, Reshape's
shape...: `edgepack.load.VALUE_OPERANDS`, where edgepack refuses the random values it verifies with)
become initializers holding the test's value, as a user stores them). The eligible names are kept
in `benchmarks/data/onnx_node_cases.txt` (refresh with --list-eligible), so counts compare across runs.

How a case is run: through the product's own path: the pipeline's graph passes
(`edgepack.pipeline.graph_passes`) on the ONNX, then the exporter `edgepack export` calls
(`export_tflite(model, path, "fp32")` / `export_ncnn(model, path, fp16=False)`), then the artifact
in its runtime through the same runner the export verifies with, compared with rtol 1e-3, atol 1e-7
(the ONNX suite's own tolerances). Each case runs in a worker process: a worker that dies (a crash
of the converter or of the runtime) or hangs past --timeout is a "crash" for that case and the
sweep goes on with a fresh worker.

Results: pass; refused (a one-line edgepack error at conversion); wrong (an artifact written but its
outputs differ: silently wrong); unrunnable (an artifact written that the runtime cannot load or
run); error (a Python exception that is not an edgepack error: a traceback); crash.

Measured 2026-12-03 (2-core shared machine, ~40 min), `python benchmarks/onnx_conformance.py
--cases-dir /tmp/casesL --formats tflite,ncnn --details /tmp/L_final.tsv`, list of 1,026 cases
(715 as given, 1,026 with constant weights):

| edgepack, fp32 | as given | weights as constants | refused cleanly | silently wrong | runtime cannot run | traceback | crashes |
|---|---|---|---|---|---|---|---|
| tflite | 598 of 715 | 904 of 1026 | 117 / 122 | 0 / 0 | 0 / 0 | 0 / 0 | 0 / 0 |
| ncnn | 43 of 715 | 65 of 1026 | 672 / 961 | 0 / 0 | 0 / 0 | 0 / 0 | 0 / 0 |

(the same code before this round: tflite 558 / 801; scaled to the issue's 748 / 1,125 lists,
598 / 715 and 904 / 1,026 are about 626 and 991.) The largest TFLite refusals left: Scan 32,
LinearAttention 26, GridSample with a run-time grid 18, DFT 15, NegativeLogLikelihoodLoss 13,
3-D average / max pools 20, grouped Conv with run-time weights 11. ncnn refuses mostly tensors whose
leading axis is not a batch of 1 and 1-axis tensors (ncnn has no batch axis).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

ONNX_VERSION = "1.23.2"
RTOL, ATOL = 1e-3, 1e-7
CASES_FILE = Path(__file__).parent / "data" / "onnx_node_cases.txt"
MODES = ("given", "const")
STATUSES = ("pass", "refused", "wrong", "unrunnable", "error", "crash")


# ---------------------------------------------------------------- cases


def _float_static(value_info) -> bool:
    t = value_info.type
    if not t.HasField("tensor_type") or t.tensor_type.elem_type != 1 or not t.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") for d in t.tensor_type.shape.dim)


def eligible_modes(case) -> list[str]:
    """The runs a case takes part in: 'given' (all inputs and outputs float32, static) and/or
    'const' (first input and all outputs float32, static; the other inputs become constants)."""
    graph = case.model.graph
    if not case.data_sets or not graph.input or not all(_float_static(v) for v in graph.output):
        return []
    if any(n.domain not in ("", "ai.onnx") for n in graph.node):
        return []
    if not _float_static(graph.input[0]):
        return []
    inputs, outputs = case.data_sets[0]
    if len(inputs) != len(graph.input) or len(outputs) != len(graph.output):
        return []
    if any(not isinstance(a, np.ndarray) for a in list(inputs) + list(outputs)):
        return []
    modes = ["const"]
    if all(_float_static(v) for v in graph.input):
        modes.insert(0, "given")
    return modes


def write_cases(folder: Path) -> dict[str, list[str]]:
    """Regenerate the node cases into `folder` (one sub-folder per case: model.onnx, data.npz);
    returns {case name: eligible modes}."""
    import onnx
    from onnx.backend.test.case.node import collect_testcases

    if onnx.__version__ != ONNX_VERSION:
        sys.exit(f"onnx {onnx.__version__} installed; this benchmark's case list is for onnx {ONNX_VERSION}: "
                 f"pip install onnx=={ONNX_VERSION}")
    eligible = {}
    for case in collect_testcases(None):
        modes = eligible_modes(case)
        if not modes:
            continue
        d = folder / case.name
        d.mkdir(parents=True, exist_ok=True)
        onnx.save(case.model, str(d / "model.onnx"))
        inputs, outputs = case.data_sets[0]
        np.savez(d / "data.npz", **{f"in{i}": a for i, a in enumerate(inputs)},
                 **{f"out{i}": a for i, a in enumerate(outputs)})
        eligible[case.name] = modes
    return eligible


def read_case_list() -> dict[str, list[str]]:
    cases = {}
    for line in CASES_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, modes = line.split()
            cases[name] = modes.split(",")
    return cases


# ---------------------------------------------------------------- one case (in a worker)


def _with_constants(proto, inputs: list[np.ndarray], names: set[str]) -> tuple[object, list[np.ndarray]]:
    """The graph inputs in `names` become initializers holding the test's value; returns the model
    and the inputs left to feed."""
    from onnx import numpy_helper

    graph = proto.graph
    kept, feed = [], []
    for vi, array in zip(list(graph.input), inputs):
        if vi.name in names:
            graph.initializer.append(numpy_helper.from_array(np.asarray(array), vi.name))
        else:
            kept.append(vi)
            feed.append(array)
    del graph.input[:]
    graph.input.extend(kept)
    return proto, feed


def run_case(case_dir: Path, mode: str, fmt: str, work: Path) -> tuple[str, str]:
    import onnx
    import onnx_ir as ir

    from edgepack.errors import EdgepackError
    from edgepack.options import ExportOptions
    from edgepack.pipeline import graph_passes

    data = np.load(case_dir / "data.npz")
    inputs = [data[k] for k in sorted((k for k in data if k.startswith("in")), key=lambda k: int(k[2:]))]
    expected = [data[k] for k in sorted((k for k in data if k.startswith("out")), key=lambda k: int(k[3:]))]
    from edgepack.load import value_operand_inputs

    proto = onnx.load(str(case_dir / "model.onnx"))
    # "const": every input after the first is a constant; "given": the inputs whose values set a
    # shape (Resize scales, Reshape shape...: edgepack refuses random values there) are constants
    names = {v.name for v in proto.graph.input[1:]} if mode == "const" else set(value_operand_inputs(proto.graph))
    proto, inputs = _with_constants(proto, inputs, names)
    names = [v.name for v in proto.graph.input]
    feed = dict(zip(names, inputs))
    try:
        model = ir.from_proto(proto)
        for _, graph_pass in graph_passes(ExportOptions(output_dir=work)):
            graph_pass(model)
        path = work / ("model.tflite" if fmt == "tflite" else "model.param")
        if fmt == "tflite":
            run = _export_tflite(model, path)
        else:
            run = _export_ncnn(model, path)
    except EdgepackError as exc:
        return "refused", str(exc).splitlines()[0][:200]
    except Exception as exc:  # noqa: BLE001  (a traceback is a result here)
        return "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:200] + " @ " + _where(exc)
    try:
        got = run(feed)
    except Exception as exc:  # noqa: BLE001
        return "unrunnable", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return _compare(got, expected)


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"


def _export_tflite(model, path: Path):
    from edgepack.converters.export_tflite import export_tflite
    from edgepack.runtimes.artifact import artifact_runner

    result = export_tflite(model, path, "fp32")
    return artifact_runner(path, {"inputs": result.inputs, "outputs": result.outputs})


def _export_ncnn(model, path: Path):
    from edgepack.converters.export_ncnn import export_ncnn
    from edgepack.runtimes.artifact import artifact_runner

    result = export_ncnn(model, path, fp16=False)
    ins = [{"name": v.name, "shape": list(v.shape), "ncnn_blob": result.blob_names[v.name]} for v in model.graph.inputs]
    outs = [{"name": v.name, "shape": list(v.shape), "ncnn_blob": result.blob_names[v.name]} for v in model.graph.outputs]
    return artifact_runner(path, {"precision": "fp32", "inputs": ins, "outputs": outs})


def _compare(got: list[np.ndarray], expected: list[np.ndarray]) -> tuple[str, str]:
    if len(got) != len(expected):
        return "wrong", f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        g = np.asarray(g)
        if g.shape != e.shape:
            if g.size == e.size:
                g = g.reshape(e.shape)
            else:
                return "wrong", f"output {i} shape {list(g.shape)}, expected {list(e.shape)}"
        if not np.allclose(g.astype(np.float64), e.astype(np.float64), rtol=RTOL, atol=ATOL, equal_nan=True):
            err = np.nanmax(np.abs(g.astype(np.float64) - e)) if g.size else 0.0
            return "wrong", f"output {i} max abs error {err:.3g}"
    return "pass", ""


def _worker(conn, root: str) -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        job = conn.recv()
        if job is None:
            return
        name, mode, fmt = job
        with tempfile.TemporaryDirectory(prefix="conformance-", dir=root) as tmp:
            try:
                result = run_case(Path(root) / name, mode, fmt, Path(tmp))
            except BaseException as exc:  # noqa: BLE001
                result = ("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
        conn.send(result)


class Pool:
    """One worker process at a time; a worker that dies or hangs is replaced (the case is a crash)."""

    def __init__(self, root: Path, timeout: float) -> None:
        self.root, self.timeout = root, timeout
        self.ctx = mp.get_context("fork")
        self.proc = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, str(self.root)), daemon=True)
        self.proc.start()
        self.conn = parent

    def run(self, job: tuple[str, str, str]) -> tuple[str, str]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(job)
        if self.conn.poll(self.timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        code = self.proc.exitcode
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return "crash", "timeout" if code is None else f"worker died (exit {code})"

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="tflite,ncnn")
    ap.add_argument("--modes", default="given,const")
    ap.add_argument("--only", default=None, help="run the cases whose name matches this regular expression")
    ap.add_argument("--cases-dir", type=Path, default=None,
                    help="keep the regenerated cases in this folder and reuse them on the next run")
    ap.add_argument("--list-eligible", action="store_true", help=f"rewrite {CASES_FILE.name} and stop")
    ap.add_argument("--details", type=Path, default=None, help="write one line per case and run (TSV)")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="onnx-node-cases-") as tmp:
        root = args.cases_dir or Path(tmp)
        start = time.perf_counter()
        if args.cases_dir and (root / "eligible.txt").is_file():
            generated = {n: m.split(",") for n, m in (ln.split() for ln in (root / "eligible.txt").read_text().splitlines())}
        else:
            generated = write_cases(root)
            (root / "eligible.txt").write_text("".join(f"{n} {','.join(m)}\n" for n, m in generated.items()))
        print(f"regenerated {len(generated)} eligible node cases (onnx {ONNX_VERSION}) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        if args.list_eligible:
            CASES_FILE.parent.mkdir(parents=True, exist_ok=True)
            CASES_FILE.write_text(f"# onnx {ONNX_VERSION} backend node cases: float32, static shapes; modes: given (all inputs "
                                  "float32) and const (first input float32, the others become initializers)\n"
                                  + "".join(f"{n} {','.join(m)}\n" for n, m in sorted(generated.items())))
            print(f"wrote {CASES_FILE}: {len(generated)} cases, "
                  f"{sum('given' in m for m in generated.values())} as given, "
                  f"{sum('const' in m for m in generated.values())} with constant weights")
            return
        listed = read_case_list()
        missing = sorted(set(listed) - set(generated))
        if missing:
            print(f"warning: {len(missing)} listed case(s) not regenerated: {missing[:5]}", file=sys.stderr)
        pool = Pool(root, args.timeout)
        counts: dict[tuple[str, str], Counter] = {}
        details = args.details.open("w") if args.details else None  # one line per case as it finishes
        for fmt in args.formats.split(","):
            for mode in args.modes.split(","):
                c = counts.setdefault((fmt, mode), Counter())
                for name, modes in listed.items():
                    if mode not in modes or name in missing or (args.only and not re.search(args.only, name)):
                        continue
                    status, detail = pool.run((name, mode, fmt))
                    c[status] += 1
                    if details:
                        details.write("\t".join((fmt, mode, name, status, detail)) + "\n")
                        details.flush()
                print(f"{fmt} {mode}: {sum(c.values())} cases, " + ", ".join(f"{s} {c[s]}" for s in STATUSES if c[s]),
                      file=sys.stderr, flush=True)
        pool.close()
    if details:
        details.close()
    _table(counts, args.formats.split(","))


def _table(counts: dict[tuple[str, str], Counter], formats: list[str]) -> None:
    print(f"\nONNX {ONNX_VERSION} backend node cases, one node per model, rtol {RTOL:g} / atol {ATOL:g}\n")
    print("| edgepack, fp32 | as given | weights as constants | refused cleanly | silently wrong | runtime cannot run | "
          "traceback | crashes |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt in formats:
        g, k = counts.get((fmt, "given"), Counter()), counts.get((fmt, "const"), Counter())

        def both(s: str) -> str:
            return f"{g[s]} / {k[s]}"

        print(f"| {fmt} | {g['pass']} of {sum(g.values())} | {k['pass']} of {sum(k.values())} | {both('refused')} | "
              f"{both('wrong')} | {both('unrunnable')} | {both('error')} | {both('crash')} |")
    print("\n(pairs: as given / weights as constants)")


if __name__ == "__main__":
    main()
