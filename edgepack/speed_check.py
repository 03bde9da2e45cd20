"""Did quantizing make it faster? After an export, each quantized artifact (int8, int8-weights) is
compared with its fp32 sibling of the same format:

- measured here (TFLite): both timed interleaved in one child process with LiteRT's default
  XNNPACK delegate, 1 thread (`edgepack.runtimes.litert_speed`), which also records each TFLite
  artifact's XNNPACK partitions and the operators left outside the delegate
  (`edgepack.runtimes.litert_delegation`) as `artifact["xnnpack"]`;
- estimated on the `--target` profile (every format): the two `estimate.latency_ms`.

When either says the quantized artifact is slower, the artifact gets `slower_than_fp32` (the
figures) and a warning, and `edgepack pack` does not take it by default. ncnn int8 artifacts get
`int8_kernels`: which of ncnn's int8 kernels run here and on the target (x86 and ARM differ, and
layers without an int8 kernel run in float)."""
from __future__ import annotations

import platform
from pathlib import Path

QUANTIZED = ("int8", "int8-weights")
RUNS = 7
BUDGET_S = 4.0  # per pair: an export should not wait long for a warning
SLOWER = 1.0  # int8 / fp32 above this is "slower"


def check_speed(artifacts: list[dict], out_dir: Path, target: str, target_cpu: str) -> list[str]:
    """Annotate `artifacts` in place (see the module docstring); returns the warnings to print."""
    warnings: list[str] = []
    fp32 = {a["format"]: a for a in artifacts if a.get("precision") == "fp32" and a.get("ok")}
    timed: set[str] = set()
    for art in artifacts:
        if art.get("format") == "ncnn" and art.get("precision") == "int8":
            art["int8_kernels"] = ncnn_int8_kernels(target, target_cpu)
        if art.get("precision") not in QUANTIZED or not art.get("ok") or art["format"] not in fp32:
            continue
        ref = fp32[art["format"]]
        slower: dict = {}
        if art["format"] == "tflite":
            measured = _measure_tflite(out_dir / art["path"], out_dir / ref["path"])
            if measured is not None:
                art["xnnpack"], ref["xnnpack"] = measured.pop("delegation"), measured.pop("reference_delegation")
                timed |= {art["path"], ref["path"]}
                art["speed_vs_fp32"] = {"measured_here": measured}
                if measured["ratio"] > SLOWER:
                    slower["measured_here"] = measured
        est, est_ref = (art.get("estimate") or {}).get("latency_ms"), (ref.get("estimate") or {}).get("latency_ms")
        if est and est_ref:
            estimated = {"target": target, "ms": est, "reference_ms": est_ref, "ratio": est / est_ref}
            art.setdefault("speed_vs_fp32", {})["estimated"] = estimated
            if estimated["ratio"] > SLOWER:
                slower["estimated"] = estimated
        if slower:
            art["slower_than_fp32"] = slower
            warnings.append(_warning(art, ref, slower))
    for art in artifacts:  # a TFLite artifact without a quantized sibling: its delegation alone
        if art.get("format") == "tflite" and art.get("ok") and art["path"] not in timed:
            art["xnnpack"] = _delegation(out_dir / art["path"])
    for art in artifacts:
        info = art.get("xnnpack")
        if info and art.get("precision") in QUANTIZED and (info["outside"] or info["partitions"] > 1):
            from edgepack.runtimes.litert_delegation import summary

            warnings.append(f"{art['path']}: {summary(info)} (each op outside XNNPACK runs in LiteRT's reference "
                            "kernels; see report.json artifacts[].xnnpack)")
    return warnings


def _warning(art: dict, ref: dict, slower: dict) -> str:
    parts = []
    if "measured_here" in slower:
        m = slower["measured_here"]
        parts.append(f"runs slower than {ref['path']} on this machine: {m['ms']:.2f} ms vs {m['reference_ms']:.2f} ms "
                     f"({m['ratio']:.2f}x; LiteRT + XNNPACK, {m['threads']} thread, median of {m['runs']} interleaved runs)")
    if "estimated" in slower:
        e = slower["estimated"]
        parts.append(f"is estimated slower than {ref['path']} on {e['target']}: {e['ms']:.2f} ms vs "
                     f"{e['reference_ms']:.2f} ms ({e['ratio']:.2f}x)")
    return f"{art['path']} " + "; it ".join(parts) + "; `edgepack pack` will not pick it unless --precision asks for it"


def _measure_tflite(artifact: Path, reference: Path) -> dict | None:
    """None when no LiteRT is installed here (nothing to measure with)."""
    from edgepack.runtimes.litert import available

    if not available():
        return None
    from edgepack.runtimes import isolated
    from edgepack.runtimes.litert_speed import compare_speed

    return isolated.call(compare_speed, str(artifact), str(reference), RUNS, 1, BUDGET_S, artifact=artifact,
                         what="litert", timeout=120)


def _delegation(artifact: Path) -> dict | None:
    """In this process: the export wrote this file and has just run it in LiteRT to verify it."""
    from edgepack.runtimes.litert import available

    if not available():
        return None
    from edgepack.runtimes.litert_delegation import delegation

    return delegation(artifact)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def ncnn_int8_kernels(target: str, target_cpu: str) -> dict:
    """Which ncnn int8 kernels apply here and on the target. ncnn runs Convolution,
    ConvolutionDepthWise, InnerProduct (and Gemm) in int8 with per-architecture kernels; every
    other layer dequantizes and runs in float, so an int8 graph full of such layers gains little."""
    machine = platform.machine().lower()
    flags = _cpu_flags()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        isa = ("AVX512-VNNI" if "avx512_vnni" in flags else "AVX-VNNI" if "avx_vnni" in flags
               else "AVX2 (no VNNI: int8 dot products widen to int16)" if "avx2" in flags else "SSE2")
        here = f"x86 int8 kernels ({isa}); results and speed differ from ARM boards"
    elif machine in ("aarch64", "arm64", "armv7l", "armv8l"):
        isa = "i8mm" if "i8mm" in flags else "dot product (sdot)" if "asimddp" in flags else "NEON without dot product"
        here = f"ARM int8 kernels ({isa})"
    else:
        here = f"{machine}: ncnn's generic int8 kernels"
    cpu = target_cpu.lower()
    arm = any(k in cpu for k in ("cortex", "arm", "aarch64", "neoverse", "apple", "kryo"))
    dot = any(k in cpu for k in ("a55", "a75", "a76", "a77", "a78", "a710", "x1", "x2", "a715", "neoverse", "apple"))
    on_target = ("ARM NEON int8 kernels" + (" with dot product (sdot)" if dot else " without dot product (Cortex-A53/A72: "
                                            "int8 gains less than on newer cores)")) if arm else "same as here"
    return {"here": here, "target": f"{target}: {on_target}",
            "int8_layers": "Convolution, ConvolutionDepthWise, InnerProduct, Gemm; other layers run in float between "
                           "dequantize and requantize"}
