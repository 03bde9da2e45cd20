"""`edgepack pack`: a zip an Android, iOS or Raspberry Pi developer drops in without reading our code.

From an export directory (report.json, verify.npz, the artifacts) one TFLite artifact is chosen
(--precision, else the first of the target profile's preferred precisions that was exported and
verified), optionally clustered (--cluster K, converters/cluster_weights.py), given TFLite Support
metadata and the labels (converters/write_tflite_metadata.py), re-verified in LiteRT against the
export's reference outputs (and task accuracy when evaluation data is at hand), and laid out:

    android  assets/NAME.tflite, assets/labels.txt, assets/edgepack.json, README.md (Kotlin)
    ios      NAME.tflite, labels.txt, edgepack.json, README.md (Swift)
    rpi      NAME.tflite, labels.txt, edgepack.json, run.py (numpy + LiteRT), README.md

edgepack.json (the manifest) is the IO contract: names, shapes, dtypes, layouts, the preprocessing
recorded at export, int8 scale and zero point, the labels, precision, target, latency (measured by
`edgepack bench` when it ran, else `edgepack estimate`'s, saying which), and every file's size,
deflated size and sha256. The zip is written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import __version__
from edgepack.errors import OutputError, UsageError
from edgepack.fsutil import DEFLATE_LEVEL, atomic_path, deflated_size, read_bounded
from edgepack.report import REPORT_NAME, read_report

PLATFORMS = ("android", "ios", "rpi")
MANIFEST_NAME = "edgepack.json"
LABELS_NAME = "labels.txt"
MANIFEST_VERSION = 1
# A bundle name becomes file and zip member names on three platforms: letters, digits, . _ -,
# starting with a letter or digit, no "..", at most 64 characters.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_ARTIFACT_BYTES = 2 << 30  # a TFLite flatbuffer cannot exceed 2 GiB
MAX_SMALL_FILE_BYTES = 64 << 20  # report.json, labels


@dataclass(frozen=True)
class PackOptions:
    export_dir: Path
    platform: str
    output: Path
    labels: Path | None = None
    name: str | None = None
    precision: str | None = None
    cluster: int | None = None
    eval_data: Path | None = None
    author: str = "edgepack"
    version: str = "1"

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise UsageError(f"--platform {self.platform!r} is not one of {', '.join(PLATFORMS)}")
        if not (Path(self.export_dir) / "report.json").is_file():
            raise UsageError(f"{self.export_dir} has no report.json; pass the folder `edgepack export -o` wrote")
        if self.labels is not None and not Path(self.labels).is_file():
            raise UsageError(f"--labels {self.labels} does not exist; pass a text file with one label per line")
        if self.eval_data is not None and not Path(self.eval_data).is_file():
            raise UsageError(f"--eval {self.eval_data} does not exist; pass an .npz with arrays x and y")
        if self.cluster is not None and not 2 <= self.cluster <= 256:
            raise UsageError(f"--cluster {self.cluster}: shared values per layer must be between 2 and 256 (16 is typical)")
        if Path(self.output).suffix != ".zip":
            raise UsageError(f"-o {self.output}: the bundle is a zip; give a path ending in .zip")
        if self.name is not None:
            check_name(self.name, "--name")


def check_name(name: Any, what: str) -> str:
    """`name` if it is safe as a file and zip member name on every platform, else a UsageError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        shown = repr(name)[:80]
        raise UsageError(f"{what} {shown} is not a plain bundle name: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '..' (pass --name to choose one)")
    return name


def pack(options: PackOptions) -> dict:
    """Build the bundle; returns the summary (manifest, sizes, clustering) that the CLI prints."""
    from edgepack.converters.write_tflite_metadata import (
        add_metadata,
        append_associated_files,
        build_metadata,
        load_model,
        min_runtime_version,
        serialize_model,
    )

    export_dir = Path(options.export_dir)
    inside(export_dir, REPORT_NAME, REPORT_NAME)  # a regular file inside the folder, not a link out of it
    report = read_report(export_dir)
    artifact, choice = choose_artifact(report, options.precision)
    source_path = inside(export_dir, artifact.get("path"), "the artifact path in report.json")
    original = _read_checked(source_path, artifact, export_dir)
    name = options.name or check_name((report.get("model") or {}).get("name"), "the model name in report.json")
    labels = read_labels(options.labels) if options.labels else None
    labelled_output = _labelled_output(artifact, labels) if labels else None

    model = load_model(original)
    clustering = None
    if options.cluster:
        from edgepack.converters.cluster_weights import cluster_tflite

        clustering = cluster_tflite(model, options.cluster).to_json()
        if not clustering["layers"]:
            raise UsageError(f"{artifact['path']} has no weight tensor larger than {options.cluster} values to cluster")
    info = model_info(report, artifact, name, labelled_output, labels, options)
    runtime = min_runtime_version(model)
    add_metadata(model, build_metadata(info), runtime)
    files_in_model = {LABELS_NAME: "\n".join(labels).encode() + b"\n"} if labels else {}
    packed = append_associated_files(serialize_model(model), files_in_model)

    out_dir = Path(options.output).absolute().parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir} ({exc.strerror or exc}); choose another path with -o") from None
    with tempfile.TemporaryDirectory(prefix=".edgepack-pack-", dir=out_dir) as tmp:  # nothing outside -o's folder
        packed_path = Path(tmp) / f"{name}.tflite"
        packed_path.write_bytes(packed)
        checks = _verify(export_dir, report, artifact, source_path, packed_path, options)

    if clustering is not None:
        clustering.update(_cluster_summary(original, packed, checks, artifact))

    files: dict[str, bytes] = {f"{name}.tflite": packed}
    if labels:
        files[LABELS_NAME] = files_in_model[LABELS_NAME]
    manifest = build_manifest(report, artifact, choice, name, options, labels, labelled_output, runtime, checks,
                              clustering, files)
    layout = _layout(options.platform, name, manifest, files)
    _write_zip(Path(options.output), layout)
    sizes = [{"path": p, "size_bytes": len(d), "deflated_bytes": deflated_size(d)} for p, d in layout.items()]
    return {
        "bundle": str(options.output), "platform": options.platform, "artifact": artifact["path"],
        "precision": artifact["precision"], "precision_choice": choice,
        "source": {"path": artifact["path"], "size_bytes": len(original), "deflated_bytes": deflated_size(original)},
        "files": sizes, "bundle_size_bytes": Path(options.output).stat().st_size,
        "verification": checks, "clustering": clustering, "manifest": manifest,
    }


# ---------------------------------------------------------------- choosing the artifact


def inside(folder: Path, relative: Any, what: str) -> Path:
    """`folder/relative`, resolved, if it is a regular file inside `folder` (symlinks followed);
    else a UsageError. Refuses absolute paths, `..`, and special files (FIFOs, devices)."""
    root = Path(folder).resolve()
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise UsageError(f"{what} is {relative!r}, not a file name; export again")
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise UsageError(f"{what} {relative!r} points outside the export folder {folder}; export again")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise UsageError(f"{what} {relative!r} leads outside the export folder {folder} (a symlink?); export again")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc}); export again") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {relative!r} is not a regular file; export again")
    return path


def choose_artifact(report: dict, precision: str | None) -> tuple[dict, str]:
    """The verified TFLite artifact to pack, and why it was chosen."""
    tflite = {a["precision"]: a for a in report.get("artifacts", []) if a.get("format") == "tflite" and a.get("ok")}
    if not tflite:
        raise UsageError("the export has no verified TFLite artifact; export with --format tflite (pack bundles .tflite "
                         "for Android, iOS and the LiteRT interpreter on a Pi)")
    if precision is not None:
        if precision not in tflite:
            raise UsageError(f"--precision {precision}: the export has TFLite {', '.join(tflite)}; choose one of those or "
                             f"export with --{precision}")
        return tflite[precision], "--precision"
    target = (report.get("target") or {}).get("name")
    preferred: tuple[str, ...] = ()
    if target:
        from edgepack.devices import load_profile

        try:
            preferred = load_profile(target).preferred_precisions
        except UsageError:
            preferred = ()
    for p in preferred:
        if p in tflite:
            return tflite[p], f"target {target} prefers {', '.join(preferred)}"
    first = "fp32" if "fp32" in tflite else next(iter(tflite))
    return tflite[first], f"target {target or '?'} states no preference the export has; took {first}"


def _read_checked(path: Path, artifact: dict, export_dir: Path) -> bytes:
    """The artifact's bytes, if report.json records its sha256 and they still match."""
    root = Path(export_dir).resolve()
    expected = [f.get("sha256") for f in artifact.get("files") or []
                if isinstance(f, dict) and isinstance(f.get("path"), str) and (root / f["path"]).resolve() == path]
    if not expected or not isinstance(expected[0], str):
        raise UsageError(f"report.json records no sha256 for {artifact.get('path')}, so it cannot be checked; export again")
    data = read_bounded(path, MAX_ARTIFACT_BYTES)
    if hashlib.sha256(data).hexdigest() != expected[0]:
        raise UsageError(f"{path.name} changed since the export (sha256 differs from report.json); export again")
    return data


def read_labels(path: Path) -> list[str]:
    try:
        lines = read_bounded(Path(path), MAX_SMALL_FILE_BYTES).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"--labels {path} is not UTF-8 text; give one label per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UsageError(f"--labels {path} is empty; give one label per line, in output order")
    return [line.strip() for line in lines]


def _labelled_output(artifact: dict, labels: list[str]) -> str:
    """The output the labels name: the first whose last axis has one entry per label."""
    for out in artifact["outputs"]:
        if out.get("shape") and out["shape"][-1] == len(labels):
            return out["name"]
    shapes = ", ".join(f"{o['name']} {o.get('shape')}" for o in artifact["outputs"])
    raise UsageError(f"--labels has {len(labels)} lines but no output has {len(labels)} classes on its last axis "
                     f"({shapes}); give one label per class")


# ---------------------------------------------------------------- metadata


def normalization(pre: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """TFLite's (x - mean) / std in raw input units: edgepack records x * scale, then (x - mean) / std,
    which is (x - mean / scale) / (std / scale)."""
    pre = pre or {}
    scale = pre.get("scale") or 1.0
    mean = tuple(float(m) / scale for m in (pre.get("mean") or [0.0]))
    std = tuple(float(s) / scale for s in (pre.get("std") or [1.0]))
    return mean, std


def model_info(report: dict, artifact: dict, name: str, labelled_output: str | None, labels: list[str] | None,
               options: PackOptions) -> Any:
    from edgepack.converters.write_tflite_metadata import (
        AssociatedFile,
        ModelInfo,
        TensorInfo,
    )

    pre = report.get("preprocessing")
    mean, std = normalization(pre)
    fid = artifact.get("fidelity") or {}
    desc = (f"{name}: {artifact['precision']} TFLite exported by edgepack {__version__} from "
            f"{report['model'].get('source_format')}; verified against the reference: cosine {fid.get('cosine', 0):.6f}"
            + (f", top-1 agreement {fid['top1_agreement']:.1%}" if fid.get("top1_agreement") is not None else "")
            + (f"; target {report['target']['name']}" if report.get("target") else "")
            + (f"; weights shared among {options.cluster} values per layer" if options.cluster else ""))
    inputs = []
    for d in artifact["inputs"]:
        image = _image(d, pre)
        text = f"{d.get('layout') or ''} {d['dtype']} {d['shape']}; " + _preprocessing_text(pre)
        if "scale" in d:
            text += f"; int8: q = round(x / {d['scale']:.6g}) + {d['zero_point']}"
        stats = {}
        if pre and pre.get("scale"):
            stats = {"stats_min": (0.0,), "stats_max": (1.0 / pre["scale"],)}
        inputs.append(TensorInfo(d["name"], text.strip(), image, mean=mean, std=std, **stats))
    outputs = []
    for d in artifact["outputs"]:
        text = f"{d.get('layout') or ''} {d['dtype']} {d['shape']}".strip()
        files: tuple = ()
        if d["name"] == labelled_output:
            text = f"scores for the {len(labels)} classes in {LABELS_NAME} (in that order); " + text
            files = (AssociatedFile(LABELS_NAME, f"Labels for the {len(labels)} classes of {d['name']}"),)
        outputs.append(TensorInfo(d["name"], text, files=files))
    return ModelInfo(name=name, description=desc, version=options.version, author=options.author,
                     inputs=tuple(inputs), outputs=tuple(outputs))


def _image(d: dict, pre: dict | None) -> Any:
    from edgepack.converters.write_tflite_metadata import ImageInfo

    shape = d.get("shape") or []
    if len(shape) != 4 or d.get("layout") != "NHWC" or shape[3] not in (1, 3):
        return None
    if shape[3] == 1:
        space = "GRAYSCALE"
    else:
        space = "UNKNOWN" if (pre or {}).get("color_order") == "bgr" else "RGB"
    return ImageInfo(space, width=int(shape[2]), height=int(shape[1]))


def _preprocessing_text(pre: dict | None) -> str:
    if not pre:
        return "no preprocessing was recorded at export: feed values as the model was trained on"
    steps = []
    if pre.get("resize"):
        steps.append(f"resize {pre['resize']}")
    if pre.get("crop"):
        steps.append(f"centre crop {pre['crop']}")
    if pre.get("scale"):
        steps.append(f"x * {pre['scale']:.6g}")
    if pre.get("mean") or pre.get("std"):
        steps.append(f"(x - {pre.get('mean') or 0}) / {pre.get('std') or 1}")
    return f"{pre.get('color_order', 'rgb')} input; " + ", then ".join(steps or ["used as is"])


# ---------------------------------------------------------------- verification


def _verify(export_dir: Path, report: dict, artifact: dict, source_path: Path, packed_path: Path,
            options: PackOptions) -> dict:
    """The packed model run in LiteRT on verify.npz, compared with the export's reference outputs;
    top-1 accuracy of the exported and the packed model on the evaluation data, when there is some."""
    from edgepack.artifacts import EvalSet
    from edgepack.runtimes.artifact import artifact_runner
    from edgepack.verify import VerificationSet, compare, load_verification, run_all

    run_packed = artifact_runner(packed_path, artifact)
    out: dict[str, Any] = {"runtime": _litert_version()}
    vname = str((report.get("verification") or {}).get("file", "verify.npz"))
    present = os.path.lexists(export_dir / vname)
    vpath = inside(export_dir, vname, "the verification file in report.json") if present else None
    if vpath is not None:
        inputs, refs = load_verification(vpath)
        names = [d["name"] for d in artifact["outputs"]]
        fid = compare([refs[n] for n in names], run_all(run_packed, VerificationSet(inputs, "verify.npz", 0)), names)
        fid.pop("per_output", None)
        out["fidelity"] = {**fid, "samples": len(next(iter(inputs.values()))), "file": vpath.name}
    else:
        out["fidelity"] = None
        out["fidelity_note"] = f"{vname} not found in the export folder: the packed model was not re-verified"
    eval_path, note = _eval_path(report, options)
    if eval_path is not None:
        with np.load(eval_path) as z:
            x, y = z["x"], z["y"]
        spec = artifact["inputs"][0]
        onnx_shape = _onnx_shape(report, spec)
        eval_set = EvalSet(eval_path, x, y, spec["name"], tuple(onnx_shape))
        out["accuracy"] = {
            "file": str(eval_path), "samples": len(y),
            "export_top1": eval_set.accuracy(artifact_runner(source_path, artifact)),
            "packed_top1": eval_set.accuracy(run_packed),
        }
    else:
        out["accuracy"] = None
        out["accuracy_note"] = note
    return out


def _eval_path(report: dict, options: PackOptions) -> tuple[Path | None, str | None]:
    if options.eval_data is not None:
        return Path(options.eval_data), None
    recorded = (report.get("evaluation") or {}).get("file")
    if recorded and Path(recorded).is_file():
        return Path(recorded), None
    if recorded:
        return None, f"the export's evaluation file {recorded} is not found from here: pass --eval DATA.npz"
    return None, "no evaluation data: pass --eval DATA.npz (arrays x, y) to measure top-1 accuracy"


def _onnx_shape(report: dict, spec: dict) -> list[int]:
    for d in report["model"].get("inputs", []):
        if d["name"] == spec["name"]:
            return list(d["shape"])
    perm = spec.get("perm") or list(range(len(spec["shape"])))
    return [spec["shape"][perm.index(i)] for i in range(len(perm))]


def _litert_version() -> str:
    from edgepack.runtimes import get_runtime

    rt = get_runtime("litert")
    return f"{rt.name} {rt.version()}"


def _cluster_summary(original: bytes, packed: bytes, checks: dict, artifact: dict) -> dict:
    before, after = deflated_size(original), deflated_size(packed)
    acc = checks.get("accuracy") or {}
    return {
        "applies_to": f"{artifact['path']} (TFLite weights of conv / fully-connected / matmul layers)",
        "deflated_before": before, "deflated_after": after, "deflate_ratio": before / after if after else None,
        "fidelity_after": checks.get("fidelity"),
        "accuracy_before": acc.get("export_top1"), "accuracy_after": acc.get("packed_top1"),
    }


# ---------------------------------------------------------------- manifest


def latency(artifact: dict, target: str | None = None) -> dict:
    """The latency an app developer should expect on the export's target, saying where it comes from:
    `edgepack bench` measured on a board of the target's profile, else the estimate for the target
    (`edgepack estimate`), else a bench measured elsewhere (this machine, or another board), named
    as such. A measurement on another machine is kept beside the estimate as `measured_elsewhere`."""
    bench = artifact.get("bench")
    estimate = artifact.get("estimate")
    if estimate and estimate.get("error"):
        estimate = None
    on_target = bool(bench) and target is not None and bench.get("device_profile") == target
    if bench and (on_target or not estimate):
        p50 = (bench.get("latency_ms") or {}).get("p50")
        where = bench.get("device") or (bench.get("host") or {}).get("hostname") or "this machine"
        out = {"source": "measured", "ms": p50, "statistic": "p50", "measured_on": where, "details": bench}
        if not on_target:
            out["note"] = f"measured on {where}, not on a {target or 'target'} board: run `edgepack bench --device ...` there"
        return out
    if estimate:
        out = {"source": "estimate", "ms": estimate.get("latency_ms"), "details": estimate}
        if bench:
            out["measured_elsewhere"] = {"ms": (bench.get("latency_ms") or {}).get("p50"), "statistic": "p50",
                                         "on": bench.get("device") or (bench.get("host") or {}).get("hostname")}
        return out
    return {"source": "unknown", "ms": None,
            "note": "not measured or estimated: run `edgepack bench` on the device, or `edgepack estimate` for the target"}


def build_manifest(report: dict, artifact: dict, choice: str, name: str, options: PackOptions, labels: list[str] | None,
                   labelled_output: str | None, runtime: str, checks: dict, clustering: dict | None,
                   files: dict[str, bytes]) -> dict:
    onnx_inputs = {d["name"]: d["shape"] for d in report["model"].get("inputs", [])}
    inputs = [{**d, "onnx_shape": onnx_inputs.get(d["name"])} for d in artifact["inputs"]]
    fid = artifact.get("fidelity") or {}
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "platform": options.platform,
        "created_by": f"edgepack {__version__}",
        "model": {
            "file": f"{name}.tflite", "format": "tflite", "precision": artifact["precision"], "precision_choice": choice,
            "weights_precision": artifact.get("weights_precision"), "compute_precision": artifact.get("compute_precision"),
            "dtypes": artifact.get("dtypes"), "source_artifact": artifact["path"],
            "source_model": report["model"].get("source_path"), "params": report["model"].get("params"),
            "macs": report["model"].get("macs"),
            "tflite_metadata": {"schema": "TFLite Support metadata_schema.fbs (M001)", "min_runtime_version": runtime,
                                "associated_files": [LABELS_NAME] if labels else []},
        },
        "inputs": inputs,
        "outputs": artifact["outputs"],
        "layout_note": "perm: stored axis i = ONNX axis perm[i]; onnx_shape is the shape the model was exported with",
        "preprocessing": report.get("preprocessing"),
        "labels": {"file": LABELS_NAME, "count": len(labels), "output": labelled_output} if labels else None,
        "target": report.get("target"),
        "latency": latency(artifact, (report.get("target") or {}).get("name")),
        "fidelity": {"export": {k: fid.get(k) for k in ("max_abs_error", "rel_error", "cosine", "top1_agreement")},
                     "packed": checks.get("fidelity"), "runtime": checks.get("runtime")},
        "accuracy": checks.get("accuracy"),
        "accuracy_note": checks.get("accuracy_note"),
        "clustering": clustering,
        "files": [_entry(p, d) for p, d in files.items()],
        "files_note": "sizes and sha256 of the files above as written in the bundle (edgepack.json lists all but itself)",
    }


def _entry(path: str, data: bytes) -> dict:
    return {"path": path, "size_bytes": len(data), "deflated_bytes": deflated_size(data),
            "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------- layout


def _layout(platform: str, name: str, manifest: dict, files: dict[str, bytes]) -> dict[str, bytes]:
    from edgepack.commands import pack_templates

    body = {**files, MANIFEST_NAME: (json.dumps(manifest, indent=2) + "\n").encode()}
    if platform == "android":
        out = {f"assets/{p}": d for p, d in body.items()}
        out["README.md"] = pack_templates.android_readme(manifest).encode()
    elif platform == "ios":
        out = dict(body)
        out["README.md"] = pack_templates.ios_readme(manifest).encode()
    else:
        out = dict(body)
        out["run.py"] = pack_templates.RPI_SCRIPT.encode()
        out["README.md"] = pack_templates.rpi_readme(manifest).encode()
    return out


def _write_zip(path: Path, layout: dict[str, bytes]) -> None:
    for member in layout:  # names come from check_name and constants; this guards the layout code itself
        if member.startswith(("/", "\\")) or ".." in member.split("/") or "\\" in member or ":" in member:
            raise OutputError(f"refusing zip member name {member!r}: it would unpack outside the bundle's folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                       compresslevel=DEFLATE_LEVEL) as z:
            for p, data in layout.items():
                info = zipfile.ZipInfo(p, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (0o755 if p.endswith(".py") else 0o644) << 16
                z.writestr(info, data, compresslevel=DEFLATE_LEVEL)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); choose another path with -o") from None


# ---------------------------------------------------------------- console


def render_summary(summary: dict, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgepack.report import _size

    src = summary["source"]
    table = Table(title=f"{summary['bundle']} ({summary['platform']}): {summary['precision']} from {src['path']} "
                        f"({summary['precision_choice']})", title_justify="left")
    for col in ("file", "size", "deflated"):
        table.add_column(col, justify="left" if col == "file" else "right")
    table.add_row(escape(f"{src['path']} (exported)"), _size(src["size_bytes"]), _size(src["deflated_bytes"]))
    for f in summary["files"]:
        table.add_row(escape(f["path"]), _size(f["size_bytes"]), _size(f["deflated_bytes"]))
    table.add_row("bundle (zip)", _size(summary["bundle_size_bytes"]), "")
    console.print(table)
    checks = summary["verification"]
    fid = checks.get("fidelity")
    if fid:
        agree = f", top-1 agreement {fid['top1_agreement']:.1%}" if fid.get("top1_agreement") is not None else ""
        console.print(f"packed model re-verified in {checks['runtime']} on {fid['samples']} sample(s) of {fid['file']}: "
                      f"cosine {fid['cosine']:.6f}, rel err {fid['rel_error']:.2e}{agree}")
    else:
        console.print(f"[yellow]{escape(checks.get('fidelity_note', ''))}[/]")
    acc = checks.get("accuracy")
    if acc:
        console.print(f"top-1 accuracy on {acc['samples']} samples of {escape(acc['file'])}: "
                      f"exported {acc['export_top1']:.2%}, packed {acc['packed_top1']:.2%}")
    cl = summary.get("clustering")
    if cl:
        console.print(f"--cluster {cl['clusters']}: {cl['layers_clustered']} weight tensor(s) share {cl['clusters']} values each; "
                      f"deflated {_size(cl['deflated_before'])} -> {_size(cl['deflated_after'])} ({cl['deflate_ratio']:.2f}x smaller)")
    lat = summary["manifest"]["latency"]
    where = f" on {lat['measured_on']}" if lat.get("measured_on") else ""
    console.print(f"latency: {lat['ms']} ms ({lat['source']}{where})" if lat.get("ms") is not None else f"latency: unknown ({lat['note']})")
    console.print(f"TFLite metadata: min_runtime_version {summary['manifest']['model']['tflite_metadata']['min_runtime_version']}"
                  + (f", labels {summary['manifest']['labels']['count']} -> {summary['manifest']['labels']['output']}"
                     if summary["manifest"]["labels"] else ", no labels (pass --labels)"))
