"""Seeded fuzzing of `inspect`, `estimate`, `bench`, and for ONNX mutants `export` (the mutant as the
model) and `compare` (the seed against the mutant), with damaged .onnx / .tflite / ncnn artifacts.

Mutants of the digits example's artifacts (tests/data/artifacts): truncation, bit flips, random
bytes, zeroed spans, a damaged header, impossible dims, and for ncnn edits of .param tokens and a
cut .bin. Each mutant goes through the CLI (`edgepack.cli.main`) in a worker process; the worker is
replaced when it dies (a signal that escaped isolation) or hangs. Outcomes per command:

  rejected      one line `edgepack: error: ...` and a non-zero exit code (what a damaged file should get)
  accepted      exit 0
  internal      `internal error` (an exception edgepack did not expect)
  traceback     a Python traceback on stderr
  signal        the worker died
  hang          no answer within --timeout seconds
  silent        accepted although the runtime itself refuses the file (the oracle below)
  leftover      a file written next to the mutant (inspect/estimate/bench/compare write nothing there;
                a failed export leaves no output folder and no staging folder; a finished one
                leaves a complete export: report.json and every file it lists, with its sha256)

export counts as accepted when it writes a complete export (exit 0, or 3/4 when an artifact fails
verification or a format cannot hold the model: report.json says which).

Oracle: the runtime that runs the format (ONNX Runtime, LiteRT, ncnn) loads the mutant and runs it
once on zeros, in its own child process (edgepack.runtimes.isolated); when it refuses or crashes,
the file is invalid and every command must reject it. A mutant the runtime runs (e.g. a flipped
weight bit) may be accepted.

    python -m benchmarks.fuzz_artifacts --mutants 300 [--seed 0] [--commands inspect,estimate,bench,export,compare]

prints the outcome table (rows: type x command) and exits 1 when any internal error, traceback,
signal, hang, silent success or leftover was seen.

Measured 2026-12-03 on the shared 2-core machine (load ~14), `--mutants 100 --seed 0` (all five
commands; 2062 s): inspect, estimate, bench and compare 0 bad outcomes on every type (onnx 83/17,
tflite 77/23, ncnn 86/14 rejected/accepted); export 80 rejected, 15 accepted, 1 internal
(#44 MemoryError), 4 tracebacks (#48/#67/#76 non-UTF-8 node metadata: onnx_ir's traceback on
stderr); #51 then gave onnx_ir's warning as a second line. After the load fixes,
`--mutants 100 --seed 0 --types onnx --commands export,compare` (325 s): export 87 rejected,
13 accepted, compare 83/17, 0 bad outcomes. The 300-mutant run was not repeated with export on
this machine (an export costs ~5 s per mutant under load)."""
from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "tests" / "data" / "artifacts"
SEED_FILES = {"onnx": "digits_cnn.fp32.onnx", "tflite": "digits_cnn.fp32.tflite", "ncnn": "digits_cnn.fp16.param"}
COMMANDS = ("inspect", "estimate", "bench", "export", "compare")
MODEL_COMMANDS = ("export", "compare")  # commands that take an ONNX model: run on ONNX mutants only
EXPORT_FORMATS = "onnx,tflite"
OUTCOMES = ("rejected", "accepted", "internal", "traceback", "signal", "hang", "silent", "leftover")
BAD = ("internal", "traceback", "signal", "hang", "silent", "leftover")
# mutations that always make the file invalid (the test asserts rejection for these without an oracle)
INVALID_BY_CONSTRUCTION = ("empty", "half", "random", "header")


# ---------------------------------------------------------------- mutants


def _seed_files(kind: str) -> dict[str, bytes]:
    main = SEEDS / SEED_FILES[kind]
    files = {f"m{main.suffix}": main.read_bytes()}
    if kind == "ncnn":
        files["m.bin"] = main.with_suffix(".bin").read_bytes()
    return files


def _flip(data: bytes, rng: random.Random, bits: int) -> bytes:
    b = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _bad_dims(kind: str, data: bytes, rng: random.Random) -> bytes:
    """An impossible or wrong dimension written through the format's own structure."""
    value = rng.choice([-7, 0, 1 << 40, 3])
    if kind == "onnx":
        import onnx

        proto = onnx.load_model_from_string(data)
        target = rng.choice([*proto.graph.input, *proto.graph.output])
        dims = target.type.tensor_type.shape.dim
        dims[rng.randrange(len(dims))].dim_value = value
        if rng.random() < 0.5 and proto.graph.initializer:
            init = rng.choice(list(proto.graph.initializer))
            if init.dims:
                init.dims[rng.randrange(len(init.dims))] = value
        return proto.SerializeToString()
    if kind == "tflite":
        import flatbuffers
        from ai_edge_litert import schema_py_generated as s

        model = s.ModelT.InitFromPackedBuf(data, 0)
        tensor = rng.choice(model.subgraphs[0].tensors)
        shape = list(tensor.shape) if tensor.shape is not None else [1]
        shape[rng.randrange(len(shape))] = value if value < (1 << 31) else -1
        tensor.shape = shape
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())
    lines = data.decode().split("\n")
    i = rng.randrange(2, len([x for x in lines if x.strip()]))
    tokens = lines[i].split()
    keyed = [j for j, t in enumerate(tokens) if "=" in t and not t.startswith("-23")]
    if keyed:
        j = rng.choice(keyed)
        tokens[j] = tokens[j].split("=")[0] + "=" + str(value)
    lines[i] = " ".join(tokens)
    return "\n".join(lines).encode()


def _param_edit(data: bytes, rng: random.Random) -> bytes:
    """A plausible-looking edit of one .param token: a count, a blob name, a layer type, a value."""
    lines = data.decode().split("\n")
    i = rng.randrange(1, len([x for x in lines if x.strip()]))
    tokens = lines[i].split()
    j = rng.randrange(len(tokens))
    tokens[j] = rng.choice(["0", "-1", "99", "Concat", "Split", "zz", "2=", "-23303=5,1", "0=1e9", "x", ""])
    lines[i] = " ".join(t for t in tokens if t)
    if rng.random() < 0.2:
        del lines[rng.randrange(2, len(lines) - 1)]
    return "\n".join(lines).encode()


def mutant(kind: str, index: int, seed: int) -> tuple[str, dict[str, bytes]]:
    """Mutant `index` of `kind` ("onnx", "tflite", "ncnn"): its mutation name and files."""
    rng = random.Random(f"{seed}:{kind}:{index}")
    files = _seed_files(kind)
    name = "m.param" if kind == "ncnn" else next(iter(files))
    ops = ["empty", "half", "truncate", "bitflip", "bitflips", "random", "zero_span", "header", "bad_dims"]
    if kind == "ncnn":
        ops += ["param_edit", "param_edit", "bin_truncate", "bin_flip"]
    op = ops[index % len(ops)]
    data = files[name]
    if op == "empty":
        data = b""
    elif op == "half":
        data = data[: len(data) // 2]
    elif op == "truncate":
        data = data[: rng.randrange(1, len(data))]
    elif op == "bitflip":
        data = _flip(data, rng, 1)
    elif op == "bitflips":
        data = _flip(data, rng, rng.randint(2, 16))
    elif op == "random":
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    elif op == "zero_span":
        start = rng.randrange(len(data))
        data = data[:start] + bytes(min(rng.randint(1, 64), len(data) - start)) + data[start + 64:]
    elif op == "header":
        span = {"onnx": 2, "tflite": 8, "ncnn": 7}[kind]
        data = bytes(rng.randrange(256) ^ 0x5A if i < span else c for i, c in enumerate(data))
        if kind == "tflite" and data[4:8] == b"TFL3":  # keep it invalid whatever the random bytes were
            data = data[:4] + b"XXXX" + data[8:]
        if kind == "ncnn" and data.startswith(b"7767517"):
            data = b"1" + data[1:]
        if kind == "onnx":  # protobuf may skip a damaged first field: cut the graph off too
            data = data[:2] + data[2: len(data) // 3]
    elif op == "bad_dims":
        data = _bad_dims(kind, data, rng)
    elif op == "param_edit":
        data = _param_edit(data, rng)
    elif op == "bin_truncate":
        files["m.bin"] = files["m.bin"][: rng.randrange(len(files["m.bin"]))]
    elif op == "bin_flip":
        files["m.bin"] = _flip(files["m.bin"], rng, rng.randint(1, 64))
    files[name] = data
    return op, files


# ---------------------------------------------------------------- running one mutant (in a worker process)


def oracle_valid(path: str) -> bool:
    """The runtime of the format loads `path` and runs it once on zeros (called in a child)."""
    import numpy as np

    from edgepack.runtimes import get_runtime, runtime_for

    session = get_runtime(runtime_for(Path(path))).load(path)
    feeds = {}
    for d in session.inputs:
        shape = d.get("shape") or [1, 1, 8, 8]
        feeds[d["name"]] = np.zeros([s if isinstance(s, int) and s > 0 else 1 for s in shape], dtype=d.get("dtype") or "float32")
    session.run(feeds)
    return True


def _cli(argv: list[str]) -> tuple[int, str]:
    from edgepack.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def classify(code: int, err: str, *, exported: bool = False) -> str:
    """The outcome of one command from its exit code and stderr; `exported`: an export wrote a
    complete folder (its exit code then says whether every artifact passed)."""
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if "internal error" in err:
        return "internal"
    if code == 0 or (exported and code in (3, 4)):
        return "accepted"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if len(lines) == 1 and lines[0].startswith("edgepack: error:"):
        return "rejected"
    return "traceback"  # several lines, or no message: not the one-line error a user should see


def run_mutant(folder: str, name: str, commands: tuple[str, ...], with_oracle: bool) -> dict:
    """Outcome per command for the mutant `folder/name`, and the oracle's verdict."""
    path = Path(folder) / name
    before = sorted(p.name for p in Path(folder).iterdir())
    valid = None
    if with_oracle:
        from edgepack.errors import EdgepackError
        from edgepack.runtimes import isolated

        try:
            valid = isolated.call(oracle_valid, str(path), artifact=path, timeout=60)
        except EdgepackError:
            valid = False
    export_dir = Path(folder) / "export"
    argv = {"inspect": ["inspect", str(path)], "estimate": ["estimate", str(path), "--target", "rpi4"],
            "bench": ["bench", str(path), "--runs", "2", "--warmup", "0", "--timeout", "60"],
            "export": ["export", str(path), "--format", EXPORT_FORMATS, "--target", "rpi4", "-o", str(export_dir)],
            "compare": ["compare", str(SEEDS / SEED_FILES["onnx"]), str(path)]}
    out: dict[str, object] = {"valid": valid}
    for command in commands:
        if command in MODEL_COMMANDS and path.suffix != ".onnx":
            continue
        code, err = _cli(argv[command])
        exported = command == "export" and export_complete(export_dir)
        outcome = classify(code, err, exported=exported)
        if outcome == "accepted" and valid is False:
            outcome = "silent"
        if exported:
            import shutil

            shutil.rmtree(export_dir)
        if sorted(p.name for p in Path(folder).iterdir()) != before:
            outcome = "leftover"
        out[command] = outcome
        out[command + "_message"] = err.strip()[:300]
    return out


def export_complete(folder: Path) -> bool:
    """An export folder with edgepack's marker, report.json and every file it lists (sha256 checked)."""
    import hashlib
    import json

    from edgepack.fsutil import MARKER_NAME

    try:
        report = json.loads((folder / "report.json").read_text())
        if not (folder / MARKER_NAME).is_file():
            return False
        return all(hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() == f["sha256"]
                   for art in report["artifacts"] for f in art["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ---------------------------------------------------------------- the driver


def fuzz(mutants: int, seed: int, commands: tuple[str, ...], timeout: float, kinds: tuple[str, ...],
         with_oracle: bool = True, workers: int = 1) -> tuple[Counter, list[dict]]:
    table: Counter = Counter()
    notes: list[dict] = []
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    with tempfile.TemporaryDirectory(prefix="edgepack-fuzz-") as tmp:
        for kind in kinds:
            for index in range(mutants):
                op, files = mutant(kind, index, seed)
                folder = Path(tmp) / f"{kind}-{index}"
                folder.mkdir()
                for fname, data in files.items():
                    (folder / fname).write_bytes(data)
                name = "m.param" if kind == "ncnn" else next(iter(files))
                try:
                    result = pool.submit(run_mutant, str(folder), name, commands, with_oracle).result(timeout=timeout)
                except (BrokenProcessPool, FutureTimeout) as exc:
                    outcome = "hang" if isinstance(exc, FutureTimeout) else "signal"
                    result = {c: outcome for c in commands if c not in MODEL_COMMANDS or kind == "onnx"}
                    for proc in list(getattr(pool, "_processes", {}).values()):
                        proc.kill()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = ProcessPoolExecutor(workers, mp_context=ctx)
                for command in commands:
                    if command not in result:  # a model command on a non-ONNX mutant
                        continue
                    table[(kind, command, result[command])] += 1
                    if result[command] in BAD or (op in INVALID_BY_CONSTRUCTION and result[command] == "accepted"):
                        notes.append({"kind": kind, "index": index, "mutation": op, "command": command,
                                      "outcome": result[command], "message": result.get(command + "_message", "")})
                table[(kind, "oracle", {True: "valid", False: "invalid", None: "not asked"}[result.get("valid")])] += 1
    pool.shutdown(wait=False, cancel_futures=True)
    return table, notes


def print_table(table: Counter, kinds: tuple[str, ...], commands: tuple[str, ...], mutants: int) -> None:
    header = f"{'type':7} {'command':9}" + "".join(f"{o:>10}" for o in OUTCOMES)
    print(header)
    for kind in kinds:
        for command in commands:
            if command in MODEL_COMMANDS and kind != "onnx":
                continue
            print(f"{kind:7} {command:9}" + "".join(f"{table[(kind, command, o)]:>10}" for o in OUTCOMES))
        print(f"{kind:7} {'oracle':9} valid {table[(kind, 'oracle', 'valid')]}, invalid {table[(kind, 'oracle', 'invalid')]} "
              f"(of {mutants} mutants)")
    total = sum(table[(k, c, o)] for k in kinds for c in commands for o in BAD)
    print(f"bad outcomes (internal, traceback, signal, hang, silent, leftover): {total}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=300, help="mutants per artifact type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--types", default="onnx,tflite,ncnn")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (all its commands)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    commands, kinds = tuple(args.commands.split(",")), tuple(args.types.split(","))
    from benchmarks import fuzz_artifacts as named  # workers and children find functions by module name, not __main__

    t0 = time.perf_counter()
    table, notes = named.fuzz(args.mutants, args.seed, commands, args.timeout, kinds, workers=args.workers)
    for note in notes[:40]:
        print(f"  {note['kind']} #{note['index']} {note['mutation']} {note['command']}: {note['outcome']}: {note['message'][:200]}")
    print_table(table, kinds, commands, args.mutants)
    print(f"{args.mutants} mutants per type, seed {args.seed}, {time.perf_counter() - t0:.0f} s")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
