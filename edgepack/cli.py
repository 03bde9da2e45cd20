"""The `edgepack` command line (click). Errors are one line on stderr with the exit code from
edgepack.errors; --debug shows the traceback."""
from __future__ import annotations

import re
import signal
import sys
import threading
import traceback
from pathlib import Path

import click

from edgepack import __version__
from edgepack.errors import EdgepackError
from edgepack.fsutil import Terminated

_DEBUG = {"on": False}


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def _debug_option(f):
    def callback(ctx, param, value):
        if value:
            _DEBUG["on"] = True
        return value

    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=callback,
                        help="Show tracebacks on errors.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
@_debug_option
def cli() -> None:
    """Export compressed PyTorch models to verified edge artifacts."""


def _field_options(fields):
    """A decorator adding one click option per dataclass field carrying an `edgepack.options.opt`
    (its flag, help, type): a command's flags and the options' Python names come from the same
    definitions. A flag not given passes its field's default."""
    fields = list(fields)

    def decorate(f):
        return _add_options(f, fields)

    return decorate


def _add_options(f, fields):
    for fld, o in reversed(fields):
        if not o.cli:
            continue
        kw: dict = {"help": o.help + (f"  [default: {_default_text(fld.default)}]" if not o.is_flag and fld.default not in (None, ()) else "")}
        if o.is_flag:
            kw.update(is_flag=True, flag_value=not fld.default if o.off_flag else True, default=fld.default)
        else:
            kw.update(default=fld.default if o.parse is None and fld.default is not None and not o.multiple else None,
                      multiple=o.multiple)
            if o.choices:
                kw["type"] = click.Choice(o.choices)
            elif o.kind is Path:
                kw["type"] = click.Path(path_type=Path)
            else:
                kw["type"] = o.kind
        decls = [o.flag_for(fld.name)] + ([o.short] if o.short else [])
        f = click.option(*decls, fld.name, **kw)(f)
    return f


def _export_fields():
    from edgepack.options import option_fields

    return [(f, o) for _, f, o in option_fields()]


def _default_text(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Output directory.")
@_field_options(_export_fields())
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
@_debug_option
def export(model: Path, output_dir: Path, as_json: bool, **options) -> None:
    """Export MODEL (.pt, .pt2, TorchScript or .onnx) and verify every artifact."""
    from rich.console import Console

    from edgepack.report import render_table, to_json_text

    import edgepack
    from edgepack.step_times import ExportClock, time_line

    clock = ExportClock()
    err = _stderr_console()
    given = {k: v for k, v in options.items() if v is not None and v != ()}
    report = edgepack.export(model, output_dir=output_dir, console=err, **given)
    out = err if as_json else Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    render_table(report, out)
    if as_json:
        click.echo(to_json_text(report), nl=False)
    else:
        click.echo(f"wrote {output_dir / 'report.json'}")
    err.print(time_line(report["timings_s"], clock.wall_s()), highlight=False, markup=False, soft_wrap=True)
    sys.exit(report["exit_code"])


@cli.command()
@click.option("--ops", is_flag=True, help="Also list the ONNX ops each exporter lowers.")
def formats(ops: bool) -> None:
    """List export formats, their precisions and whether they are built yet."""
    from edgepack.formats import FORMATS

    for cap in FORMATS.values():
        state = "yes" if cap.built else "not yet"
        note = f" ({cap.note})" if cap.note else ""
        click.echo(f"{cap.name:8s} precisions: {', '.join(cap.precisions):30s} built: {state}{note}")
        if ops and cap.name == "tflite":
            from edgepack.converters.export_tflite import supported_ops

            click.echo(f"         ONNX ops: {', '.join(supported_ops())}")
        elif ops and cap.name == "onnx":
            click.echo("         ONNX ops: any op ONNX Runtime runs (the graph stays ONNX)")


@cli.command("compare", short_help="Compare two ONNX models per node: find the layer that breaks int8.")
@click.argument("model_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("model_b", metavar="B", type=click.Path(path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), default=None,
              help="Samples .npz: an export's verify.npz, or one (S, ...) array per input name. Default: the "
                   "verify.npz beside A, else 4 seeded N(0,1) samples.")
@click.option("--per-node", is_flag=True,
              help="Compare every tensor A and B share (same ONNX name): SQNR, cosine, max abs error, and the SQNR each "
                   "node loses; show the nodes that lose most and the first node below 20 dB SQNR (a common int8 rule "
                   "of thumb).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Nodes to show with --per-node.")
@click.option("--samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="At most N samples for --per-node (intermediate tensors are large).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the random samples.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON to stdout.")
@_debug_option
def compare_command(model_a: Path, model_b: Path, inputs_path: Path | None, per_node: bool, top: int, samples: int,
                    seed: int, as_json: bool) -> None:
    """Compare ONNX model B with reference A (e.g. OUT/model.fp32.onnx and OUT/model.int8.onnx), both run
    in ONNX Runtime with optimizations off, to find the layer that breaks int8."""
    from rich.console import Console

    from edgepack.commands.compare import compare_models, render
    from edgepack.report import to_json_text

    result = compare_models(model_a, model_b, inputs=inputs_path, per_node=per_node, samples=samples, seed=seed, top=top)
    if as_json:
        click.echo(to_json_text(result), nl=False)
        return
    render(result, Console(highlight=False, width=None if sys.stdout.isatty() else 160))


def _dataclass_options(*classes):
    import dataclasses

    return _field_options((f, f.metadata["opt"]) for cls in classes for f in dataclasses.fields(cls))


def _bench_classes():
    from edgepack.commands.bench import BenchOptions
    from edgepack.commands.bench_cli import SshOptions

    return BenchOptions, SshOptions


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@_dataclass_options(*_bench_classes())
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_debug_option
def bench(artifact: Path, as_json: bool, **values) -> None:
    """Latency and memory of ARTIFACT (.onnx, .tflite, ncnn .param) or of every artifact in an export
    folder (results go into its report.json and report.html), here or on a board."""
    import dataclasses

    from edgepack.commands.bench_cli import run_bench

    bench_options, ssh_options = _bench_classes()

    def make(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    sys.exit(run_bench(artifact, make(bench_options), make(ssh_options), as_json))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@_debug_option
def inspect(artifact: Path, as_json: bool) -> None:
    """Op census, params, MACs, inputs/outputs (layout, quantization) of an .onnx, .tflite or ncnn .param ARTIFACT."""
    from rich.console import Console

    from edgepack.commands.inspect import inspect_artifact, render_inspect
    from edgepack.report import to_json_text

    info = inspect_artifact(artifact)
    if as_json:
        click.echo(to_json_text(info), nl=False)
        return
    render_inspect(info, Console(highlight=False, width=None if sys.stdout.isatty() else 160))


@cli.command()
@click.argument("export_dir", metavar="OUTDIR", type=click.Path(path_type=Path))
@click.option("--platform", required=True, type=click.Choice(["android", "ios", "rpi"]), help="Bundle layout.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The bundle, e.g. bundle.zip.")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Text file, one label per output class.")
@click.option("--name", default=None, help="Model file name in the bundle (default: the exported model's name).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Which TFLite artifact (default: the first the target profile prefers that was exported).")
@click.option("--cluster", type=int, default=None,
              help="Share each layer's weights among K values (k-means) so the bundle deflates smaller; re-verified.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path), default=None,
              help=".npz with x and y: top-1 accuracy before/after (default: the export's --eval file if found).")
@click.option("--author", default="edgepack", show_default=True, help="Author in the TFLite metadata.")
@click.option("--model-version", "model_version", default="1", show_default=True, help="Version in the TFLite metadata.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (with the manifest) as JSON.")
@_debug_option
def pack(export_dir: Path, platform: str, output: Path, labels: Path | None, name: str | None, precision: str | None,
         cluster: int | None, eval_data: Path | None, author: str, model_version: str, as_json: bool) -> None:
    """Bundle OUTDIR's TFLite model with metadata, labels and an IO manifest for Android, iOS or a Pi."""
    from rich.console import Console

    from edgepack.commands.pack import PackOptions, render_summary
    from edgepack.commands.pack import pack as run_pack
    from edgepack.report import to_json_text

    summary = run_pack(PackOptions(export_dir=export_dir, platform=platform, output=output, labels=labels, name=name,
                                   precision=precision, cluster=cluster, eval_data=eval_data, author=author,
                                   version=model_version))
    if as_json:
        click.echo(to_json_text(summary), nl=False)
        return
    render_summary(summary, Console(highlight=False, width=None if sys.stdout.isatty() else 160))


@cli.command()
@click.argument("sweep_file", metavar="SWEEP.toml", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("sweep-out"), show_default=True,
              help="Output directory (finished cells in it are reused).")
@click.option("--jobs", type=int, default=None, help="Local worker processes (default: one per CPU).")
@click.option("--ray", "ray_address", default=None, metavar="auto|ADDRESS",
              help="Run each cell as a Ray task on this Ray cluster (pip install 'edgepack[sweep]').")
@click.option("--bench", is_flag=True, help="Benchmark the verified artifacts on the sweep file's boards, after the exports.")
@click.option("--inventory", type=click.Path(path_type=Path), default=None, help="Device inventory for --bench boards.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json to stdout.")
@_debug_option
def sweep(sweep_file: Path, output_dir: Path, jobs: int | None, ray_address: str | None, bench: bool,
          inventory: Path | None, as_json: bool) -> None:
    """Export, verify, evaluate and estimate every variant of the grid in SWEEP.toml; recommend one per target."""
    from rich.console import Console

    from edgepack.commands.sweep import render_table
    from edgepack.commands.sweep import sweep as run
    from edgepack.report import to_json_text

    err = _stderr_console()
    result = run(sweep_file, output_dir, ray=ray_address, jobs=jobs, bench=bench, inventory=inventory, console=err)
    render_table(result, err if as_json else Console(highlight=False, width=None if sys.stdout.isatty() else 160))
    if as_json:
        click.echo(to_json_text(result), nl=False)
    else:
        click.echo(f"wrote {output_dir / 'sweep.json'} and {output_dir / 'sweep.html'}")
    sys.exit(result["exit_code"])


@cli.command()
@click.argument("name", required=False)
def devices(name: str | None) -> None:
    """List device profiles, or show one."""
    import dataclasses

    from edgepack.devices import list_profiles, load_profile

    if name is None:
        for n in list_profiles():
            p = load_profile(n)
            click.echo(f"{p.name:16s} {p.cpu:52s} {p.description}")
        return

    def show(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                show(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                show(f"{prefix}[{i}]", item)
        else:
            click.echo(f"{prefix:32s} {value}")

    show("", dataclasses.asdict(load_profile(name)))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--target", default=None, help="Device profile (see `edgepack devices`); default: the export's target.")
@click.option("--runtime", type=click.Choice(["litert", "onnxruntime", "ncnn"]), default=None,
              help="Runtime to estimate for (default: the artifact's own: litert for .tflite, onnxruntime for .onnx).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads (default: the profile's).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int8-weights"]), default=None,
              help="Precision (default: from the export's report.json, else read off the file).")
@click.option("--input-shape", "input_shape", default=None,
              help="Input shape for an ncnn .param (it stores none), e.g. 1x3x224x224; default: the export's report.json.")
@click.option("--top", type=click.IntRange(min=0), default=15, show_default=True,
              help="Layers to list (slowest first); 0 = all.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON (latency_ms, peak_memory_mb, layers).")
def estimate(artifact: Path, target: str | None, runtime: str | None, threads: int | None, precision: str | None,
             input_shape: str | None, top: int, as_json: bool) -> None:
    """Estimate ARTIFACT's latency and peak memory on a target from its device profile (no board needed)."""
    from rich.console import Console

    from edgepack.commands.estimate import render_estimate, run_estimate
    from edgepack.report import to_json_text

    result = run_estimate(artifact, target=target, runtime=runtime, threads=threads, precision=precision,
                          input_shape=input_shape)
    if as_json:
        click.echo(to_json_text(result.to_json()), nl=False)
        return
    render_estimate(result, Console(highlight=False, width=None if sys.stdout.isatty() else 160), top)


def main(argv: list[str] | None = None) -> int:
    _DEBUG["on"] = False  # set again by --debug; a second main() in one process starts clean
    previous = _sigterm_as_error()
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_error():
    """SIGTERM raises Terminated (one line, exit 143) instead of killing the process silently; an
    export replaces this with its own handler while its folder is staged. Returns the handler
    it replaced (None off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated("terminated (SIGTERM)")

    return signal.signal(signal.SIGTERM, handler)


def _main(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="edgepack", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except click.exceptions.Abort:  # click's form of SIGINT (Ctrl-C)
        click.echo("edgepack: interrupted (SIGINT)", err=True)
        return 130
    except click.UsageError as exc:  # bad flags: one line like every other error, exit 2
        ctx = exc.ctx
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"edgepack: error: {_one_line(exc.format_message())}{where}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except EdgepackError as exc:
        if _DEBUG["on"]:  # the traceback, then the same line and exit code as without --debug
            traceback.print_exc()
        click.echo(f"edgepack: error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("edgepack: interrupted (SIGINT)", err=True)
        return 130
    except Terminated as exc:
        click.echo(f"edgepack: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # a bug in edgepack: still one line unless --debug
        if _DEBUG["on"]:
            raise
        line = _one_line((str(exc).strip().splitlines() or [type(exc).__name__])[0])
        click.echo(f"edgepack: internal error: {type(exc).__name__}: {line} (run with --debug for the traceback)", err=True)
        return 1
    return 0


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_line(text: str) -> str:
    """Error messages are one line: fold any line breaks (and terminal colour codes) from wrapped text."""
    return " ".join(part.strip() for part in _ANSI_RE.sub("", text).splitlines() if part.strip())
