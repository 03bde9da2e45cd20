"""Running `edgepack ...` in the test process: main() with stdout and stderr captured, so a case
costs no interpreter and torch start-up (the README's command still runs as a real process in
test_cli.py)."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    out: Path  # the -o folder of this run


def cli_in_process(*args: str, out: Path) -> Run:
    from edgepack.cli import main

    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = main(list(args))
    return Run(code, o.getvalue(), e.getvalue(), out)
