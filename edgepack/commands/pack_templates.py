"""The texts `edgepack pack` puts next to the model: a README per platform with a short snippet
(Kotlin for Android, Swift for iOS) and, for the Raspberry Pi, `run.py` (numpy + the LiteRT
interpreter only). Each is filled from the manifest (edgepack.json), so names, shapes, dtypes and
preprocessing match the model in the same bundle."""
from __future__ import annotations

import json
from math import prod


def _io_table(manifest: dict) -> str:
    rows = ["| tensor | dtype | shape | layout | int8 scale / zero point |", "|---|---|---|---|---|"]
    for kind in ("inputs", "outputs"):
        for d in manifest[kind]:
            q = f"{d['scale']:.6g} / {d['zero_point']}" if "scale" in d else "-"
            rows.append(f"| {kind[:-1]} `{d['name']}` | {d['dtype']} | {d['shape']} | {d.get('layout') or '-'} | {q} |")
    return "\n".join(rows)


def _common(manifest: dict) -> str:
    m = manifest["model"]
    lat = manifest["latency"]
    lat_text = (f"{lat['ms']:.3g} ms ({lat['source']})" if lat.get("ms") is not None
                else f"unknown ({lat.get('note', '')})")
    pre = manifest.get("preprocessing")
    pre_text = json.dumps(pre) if pre else "none recorded at export (feed values as the model was trained on)"
    labels = manifest.get("labels")
    files = "\n".join(f"- `{f['path']}`: {f['size_bytes']} bytes ({f['deflated_bytes']} deflated), sha256 {f['sha256'][:16]}..."
                      for f in manifest["files"])
    return f"""Model `{m['file']}`: {m['precision']} TFLite, from `{m['source_artifact']}`; TFLite runtime
{m['tflite_metadata']['min_runtime_version']} or newer. The `.tflite` carries TFLite Support metadata (name, IO
description, normalization{', labels' if labels else ''}), which Android Studio's ML Model Binding and the TFLite
Task Library read. `edgepack.json` is the full IO contract.

{_io_table(manifest)}

Preprocessing: {pre_text}.
{f"Labels: `labels.txt`, {labels['count']} lines, one per class of output `{labels['output']}`." if labels else "No labels."}
Latency: {lat_text}, on {lat.get('device') or (manifest.get('target') or {}).get('name', '?')}.{(" Note: " + lat['platform_note'] + ".") if lat.get('platform_note') else ""}

Files:
{files}
"""


def _first(manifest: dict, kind: str) -> dict:
    return manifest[kind][0]


def _kotlin_type(d: dict) -> tuple[str, int]:
    """(Kotlin array type, bytes per value)."""
    return ("ByteArray", 1) if d["dtype"] == "int8" else ("FloatArray", 4)


def android_readme(manifest: dict) -> str:
    name = manifest["name"]
    i, o = _first(manifest, "inputs"), _first(manifest, "outputs")
    width = _kotlin_type(i)[1]
    out_type = _kotlin_type(o)[0]
    n_in, n_out = prod(i["shape"]), prod(o["shape"][1:]) if len(o["shape"]) > 1 else prod(o["shape"])
    quant = ""
    convert = "pixels.forEach { input.putFloat(it) }"
    if "scale" in i:
        quant = f"\n// int8 input: q = round(x / {i['scale']:.8g}) + {i['zero_point']}, clamped to [-128, 127]"
        convert = (f"pixels.forEach {{ input.put(((it / {i['scale']:.8g}f).roundToInt() + {i['zero_point']})"
                   ".coerceIn(-128, 127).toByte()) }")
    dequant = "output[0]"
    if "scale" in o:
        dequant = f"output[0].map {{ (it - {o['zero_point']}) * {o['scale']:.8g}f }}"
    labels = manifest.get("labels")
    result = ('val labels = context.assets.open("labels.txt").bufferedReader().readLines()\n'
              '    val best = scores.indices.maxBy { scores[it] }\n'
              '    return labels[best] to scores[best]') if labels else \
        "val best = scores.indices.maxBy { scores[it] }\n    return best.toString() to scores[best]"
    return f"""# {name} for Android

Copy `assets/` into `app/src/main/` (or merge it into your `assets/`).

{_common(manifest)}
## Run it with the LiteRT Interpreter (Kotlin)

```kotlin
// app/build.gradle.kts:
//   dependencies {{ implementation("com.google.ai.edge.litert:litert:1.0.1") }}
//   android {{ androidResources {{ noCompress += "tflite" }} }}   // so the model can be memory-mapped
import android.content.Context
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import kotlin.math.roundToInt

fun loadInterpreter(context: Context): Interpreter {{
    val fd = context.assets.openFd("{manifest['model']['file']}")
    val model = FileInputStream(fd.fileDescriptor).channel
        .map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
    return Interpreter(model, Interpreter.Options().setNumThreads(2))
}}

// pixels: {n_in} values, {i.get('layout') or ''} {i['shape']}, already preprocessed as described above{quant}
fun classify(context: Context, interpreter: Interpreter, pixels: FloatArray): Pair<String, Float> {{
    val input = ByteBuffer.allocateDirect({n_in * width}).order(ByteOrder.nativeOrder())
    {convert}
    input.rewind()
    val output = Array(1) {{ {out_type}({n_out}) }}
    interpreter.run(input, output)
    val scores = {dequant}
    {result}
}}
```
"""


def ios_readme(manifest: dict) -> str:
    name = manifest["name"]
    i, o = _first(manifest, "inputs"), _first(manifest, "outputs")
    n_in = prod(i["shape"])
    out_swift = "Int8" if o["dtype"] == "int8" else "Float32"
    convert = "let values = pixels"
    if "scale" in i:
        convert = (f"let values = pixels.map {{ Int8(clamping: Int(($0 / {i['scale']:.8g}).rounded()) + {i['zero_point']}) }}")
    scores = "raw"
    if "scale" in o:
        scores = f"raw.map {{ Float32(Int($0) - {o['zero_point']}) * {o['scale']:.8g} }}"
    labels = manifest.get("labels")
    result = ('let labelsPath = Bundle.main.path(forResource: "labels", ofType: "txt")!\n'
              'let labels = try String(contentsOfFile: labelsPath, encoding: .utf8).split(separator: "\\n")\n'
              'print(labels[best], scores[best])') if labels else "print(best, scores[best])"
    return f"""# {name} for iOS

Add `{manifest['model']['file']}`{', `labels.txt`' if labels else ''} and `edgepack.json` to your app target
(Copy Bundle Resources).

{_common(manifest)}
## Run it with the LiteRT (TensorFlow Lite) Interpreter (Swift)

```swift
// Podfile: pod 'TensorFlowLiteSwift'
import TensorFlowLite

let modelPath = Bundle.main.path(forResource: "{name}", ofType: "tflite")!
var options = Interpreter.Options()
options.threadCount = 2
let interpreter = try Interpreter(modelPath: modelPath, options: options)
try interpreter.allocateTensors()

// pixels: {n_in} Float32 values, {i.get('layout') or ''} {i['shape']}, already preprocessed as described above
let pixels: [Float32] = Array(repeating: 0, count: {n_in})
{convert}
try interpreter.copy(values.withUnsafeBufferPointer {{ Data(buffer: $0) }}, toInputAt: 0)
try interpreter.invoke()
let raw = try interpreter.output(at: 0).data.withUnsafeBytes {{ Array($0.bindMemory(to: {out_swift}.self)) }}
let scores = {scores}
let best = scores.indices.max {{ scores[$0] < scores[$1] }}!
{result}
```
"""


def rpi_readme(manifest: dict) -> str:
    name = manifest["name"]
    i = _first(manifest, "inputs")
    onnx_shape = i.get("onnx_shape") or i["shape"]
    return f"""# {name} for the Raspberry Pi

```bash
pip install numpy ai-edge-litert      # or: pip install tflite-runtime
python3 run.py sample.npy             # top classes for one sample
python3 run.py sample.npy --bench 100 # and the median latency of 100 runs
```

`sample.npy` holds raw input for `{i['name']}` in the layout recorded at export (NCHW unless the
manifest's preprocessing says nhwc), shape {onnx_shape} or one sample without the batch axis;
`run.py` applies the recorded scale, mean and std, reorders to the model's {i.get('layout') or ''} layout
and quantizes int8 inputs. Pass `--preprocessed` if the array is already normalized. Resizing and
cropping images is not done by `run.py`: give arrays of the exported size.

{_common(manifest)}"""


RPI_SCRIPT = '''#!/usr/bin/env python3
"""Run the model in this folder with the LiteRT interpreter: python3 run.py sample.npy [--top 5]
[--bench N] [--preprocessed] [--json]. Needs only numpy and ai-edge-litert (or tflite-runtime).
Everything about the model (IO names, shapes, layout, preprocessing, int8 scales, labels) is read
from edgepack.json beside this file."""
import argparse
import json
import pathlib
import sys
import time

import numpy as np

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter

HERE = pathlib.Path(__file__).resolve().parent


def preprocess(x, spec, pre, preprocessed):
    """Raw sample(s) in the export's layout -> the tensor the model takes."""
    x = np.asarray(x, dtype=np.float32)
    onnx_shape = spec.get("onnx_shape") or spec["shape"]
    pre = pre or {}
    if len(onnx_shape) == 4 and pre.get("layout") == "nhwc" and x.ndim in (3, 4):
        x = np.moveaxis(x, -1, -3)  # raw NHWC -> NCHW, the export's axis order
    if not preprocessed:
        if pre.get("scale"):
            x = x * np.float32(pre["scale"])
        channel = (-1,) + (1,) * (len(onnx_shape) - 2) if len(onnx_shape) > 2 else (-1,)
        if pre.get("mean") is not None:
            x = x - np.asarray(pre["mean"], np.float32).reshape(channel)
        if pre.get("std") is not None:
            x = x / np.asarray(pre["std"], np.float32).reshape(channel)
    x = x.reshape(onnx_shape).transpose(spec.get("perm") or range(len(onnx_shape)))
    if "scale" in spec:  # int8 input
        x = np.clip(np.round(x / spec["scale"]) + spec["zero_point"], -128, 127).astype(np.int8)
    return np.ascontiguousarray(x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sample", help=".npy with one input (raw, in the export layout)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--bench", type=int, default=0, help="also time N runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preprocessed", action="store_true", help="the sample is already normalized")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    manifest = json.loads((HERE / "edgepack.json").read_text())
    interpreter = Interpreter(model_path=str(HERE / manifest["model"]["file"]), num_threads=args.threads)
    interpreter.allocate_tensors()
    spec = manifest["inputs"][0]
    x = preprocess(np.load(args.sample), spec, manifest.get("preprocessing"), args.preprocessed)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()
    out_spec = manifest["outputs"][0]
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(np.float32)
    if "scale" in out_spec:
        y = (y - out_spec["zero_point"]) * out_spec["scale"]
    scores = y.reshape(-1)
    labels = None
    if manifest.get("labels"):
        labels = (HERE / manifest["labels"]["file"]).read_text(encoding="utf-8").splitlines()
    order = np.argsort(-scores)[: args.top]
    top = [{"index": int(k), "label": labels[k] if labels else str(k), "score": float(scores[k])} for k in order]
    result = {"top": top}
    if args.bench:
        times = []
        for _ in range(args.bench):
            start = time.perf_counter()
            interpreter.invoke()
            times.append((time.perf_counter() - start) * 1e3)
        result["latency_ms_p50"] = float(np.median(times))
    if args.json:
        print(json.dumps(result))
    else:
        for t in top:
            print(f"{t['label']:>20s}  {t['score']:.4f}")
        if args.bench:
            print(f"latency p50 {result['latency_ms_p50']:.3f} ms over {args.bench} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
