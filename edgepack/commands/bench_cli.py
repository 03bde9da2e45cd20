"""What `edgepack bench` does with its flags: build the options and the SSH target, benchmark one
artifact or an export folder, print the result (kept out of cli.py so the command stays a list of
flags)."""
from __future__ import annotations

import contextlib
import sys
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import click

from edgepack.commands.bench import BenchOptions, bench_artifact, bench_export_dir
from edgepack.errors import UsageError
from edgepack.options import opt


@dataclass(frozen=True)
class SshOptions:
    """Where to measure: here (no --remote/--device) or on a board over SSH."""

    remote: str | None = field(default=None, metadata=opt("Run on a board over SSH: user@host[:port] or an ssh host alias."))
    device: str | None = field(default=None, metadata=opt("Run on a board from the device inventory (devices.toml)."))
    inventory: Path | None = field(default=None, metadata=opt(
        "devices.toml (default: $EDGEPACK_DEVICES, else ~/.config/edgepack/devices.toml).", kind=Path, parse=Path))
    remote_python: str | None = field(default=None, metadata=opt(
        "The board's Python with numpy and the runtime (default python3)."))
    ssh_config: Path | None = field(default=None, metadata=opt(
        "ssh config file (default ~/.ssh/config).", kind=Path, parse=Path))
    accept_new_host_key: bool = field(default=False, metadata=opt(
        "Record an unknown host key (a changed key is still refused).", is_flag=True))
    send_runner: bool = field(default=False, metadata=opt(
        "Send edgepack's runner even if edgepack is installed on the board.", is_flag=True))

    def target(self):
        """The SshTarget these flags ask for, or None to run here; remote-only flags without a board are an error."""
        return ssh_target(**dataclasses.asdict(self))


def ssh_target(*, remote: str | None, device: str | None, inventory: Path | None, remote_python: str | None,
               ssh_config: Path | None, accept_new_host_key: bool, send_runner: bool):
    """The SshTarget the flags ask for, or None to run here; remote-only flags without a board are an error."""
    from edgepack.commands.remote import SshTarget

    if remote and device:
        raise UsageError("pass either --remote or --device, not both")
    if not remote and not device:
        used = [flag for flag, v in (("--remote-python", remote_python), ("--ssh-config", ssh_config),
                                     ("--accept-new-host-key", accept_new_host_key), ("--send-runner", send_runner),
                                     ("--inventory", inventory)) if v]
        if used:
            raise UsageError(f"{', '.join(used)} only apply with --remote or --device")
        return None
    common = {"ssh_config": ssh_config, "accept_new_host_key": accept_new_host_key, "send_runner": send_runner}
    if device:
        from edgepack.commands.device_inventory import find_board

        board = find_board(device, inventory)
        return SshTarget.parse(board.ssh, python=remote_python or board.python, device=board.name, profile=board.profile,
                               **common)
    return SshTarget.parse(remote, python=remote_python or "python3", **common)


def run_bench(artifact: Path, options: BenchOptions, ssh: SshOptions, as_json: bool) -> int:
    from rich.console import Console

    from edgepack.report import to_json_text

    target = ssh.target()
    if not artifact.exists():
        raise UsageError(f"{artifact} not found; pass an artifact (.onnx, .tflite, ncnn .param) or an export folder")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160, stderr=as_json)
    if target is not None:
        from edgepack.commands.remote import RemoteHost

        session = RemoteHost(target)
    else:
        session = contextlib.nullcontext(None)
    with session as host:
        if not artifact.is_dir():
            result = bench_artifact(artifact, options, remote=host)
            if as_json:
                click.echo(to_json_text(result), nl=False)
            else:
                print_result(result, console)
            _warn_load([result])
            return 0 if (result.get("verify") or {}).get("ok", True) else 3
        report, failures = bench_export_dir(artifact, options, remote=host)
    from edgepack.commands.bench_report import render_bench_table, write_html

    render_bench_table(report, console)
    html = write_html(report, artifact)
    if as_json:
        click.echo(to_json_text({"artifacts": [{"path": a.get("path"), "bench": a.get("bench")} for a in report["artifacts"]]}),
                   nl=False)
    _warn_load([a["bench"] for a in report["artifacts"] if a.get("bench") and a.get("bench_error") is None])
    for line in failures:
        click.echo(f"edgepack: error: {line}", err=True)
    console.print(f"wrote {artifact / 'report.json'} (artifacts[i].bench) and {html}", markup=False)
    codes = [a["bench_error"]["exit_code"] for a in report["artifacts"] if a.get("bench_error")]
    for a in report["artifacts"]:
        checked = (a.get("bench") or {}).get("verify")
        if checked is not None:
            console.print(f"{a['path']}: verified where it runs: " + ("ok" if checked["ok"] else
                          "[red]FAILED[/] " + "; ".join(checked.get("problems") or [checked.get("error", "")])), markup=True)
            if not checked["ok"]:
                codes.append(3)
    return max(codes, default=0)


def _warn_load(results: list[dict]) -> None:
    """A busy machine makes latencies unreliable: say so once on stderr (the result keeps it too)."""
    for text in dict.fromkeys(r["load_warning"] for r in results if r.get("load_warning")):
        click.echo(f"warning: {text}", err=True)
        break  # the first is enough: the same machine, moments apart
    for text in dict.fromkeys(r["device_profile_mismatch"] for r in results if r.get("device_profile_mismatch")):
        click.echo(f"warning: {text}", err=True)


def print_result(r: dict, console) -> None:
    from rich.markup import escape

    lat = r["latency_ms"]
    where = f" on {r['device']}" if r.get("device") else ""
    console.print(f"[bold]{escape(r['artifact'])}[/]{escape(where)}: {r['runtime']} {escape(r['runtime_version'])}, "
                  f"{r['threads']} thread(s), {r['runs']} runs after {r['warmup']} warmup"
                  + ("" if r.get("optimize", True) else ", optimizations off"))
    console.print("latency ms: " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99", "mean", "std", "min", "max")))
    peak, model = r.get("peak_rss_mb"), r.get("model_rss_mb")
    memory = "-" if peak is None else f"{peak:.1f} MB peak RSS ({model:.1f} MB over the runtime alone)"
    console.print(f"load {r['load_ms']:.1f} ms, first run {r['first_run_ms']:.2f} ms; memory {memory}; "
                  f"file {r['size_bytes'] / 1024:.1f} KB")
    checked = r.get("verify")
    if checked is not None:
        floor = checked.get("floor") or {}
        if checked.get("error"):
            console.print(f"[red]verify FAILED[/]: {escape(checked['error'])}")
        else:
            console.print(f"verify ({checked['samples']} samples, floor cosine {floor.get('min_cosine')}): cosine "
                          f"{checked['cosine']:.6f}, rel error {checked['rel_error']:.3g}: "
                          + ("[green]ok[/]" if checked["ok"] else "[red]FAILED[/] " + escape("; ".join(checked["problems"]))))
