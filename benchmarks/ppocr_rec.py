"""PP-OCRv4 text recogniser (real weights, from rapidocr-onnxruntime 1.4.4): exact-match rate of
every exported artifact next to the original ONNX's, on rendered text lines.

Lines: 4-16 characters of digits and Latin letters, DejaVu Sans (Debian's fonts-dejavu-core) at
two sizes, fixed seeds; preprocessing as rapidocr does (height 48, ratio kept, (x/255 - 0.5)/0.5,
zero padding to width 320); CTC greedy decoding (surrounding spaces stripped) with the model's own character list (its
`character` metadata, with rapidocr's blank at 0 and space at the end). int8 is calibrated on 200
other rendered lines.

    pip install rapidocr-onnxruntime==1.4.4; apt-get install -y fonts-dejavu-core
    python benchmarks/ppocr_rec.py [--lines 300] [--formats onnx,tflite] [--out /tmp/ppocr_rec] [--min-cosine 0.99]

Measured on this x86 host (300 lines; the original ONNX reads 70.3%: DejaVu Sans' I and l are
nearly the same glyph). Before: the guard at 0.99 (now the default) on the graph as given; after:
the int8 graph with fold_constant_affine (PP-LCNetV3's 40 constant Mul/Add folded into convs, 28
written-out hard-swish fused; `--no-fold-affine` turns it off), minmax ranges, guard at 0.99:

    artifact       before        after (fold_constant_affine)
    ONNX fp32       70.3  +0.0   70.3  +0.0
    ONNX fp16       70.3  +0.0   70.3  +0.0   (fails its floor: rel err 0.77, an fp16 overflow)
    ONNX int8       55.0 -15.3   61.0  -9.3   (fails its floor: cosine 0.957, 1 node float)
    TFLite fp32     70.3  +0.0   70.3  +0.0   (fails its floor: rel err 1.4e-4 > 1e-4, with or without the fold)
    TFLite fp16     70.3  +0.0   70.3  +0.0   (fails its floor: rel err 0.84)
    TFLite int8     53.0 -17.3   54.3 -16.0   (fails its floor: cosine 0.967)
    ncnn            refused: the attention's [3, 1, 8, 40, 15] tensor has no batch-1 leading axis

Measured outside this script on the same lines (quantize_int8 + ONNX Runtime, no guard, the folded
graph): min/max 57.3%, `--calib-method mse` 61.0% (cosine 0.976); keeping every node but Conv and
MatMul float still only 62.3%, so the rest of the gap is int8 at the conv/matmul inputs and weights
(7-bit weights on this host's ONNX Runtime: 8-bit measured the same within a point). int8 misses the 2-point goal; every
int8 artifact fails its floor, so none is called verified.
"""
from __future__ import annotations

import argparse
import math
import string
from pathlib import Path

import numpy as np

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SIZES = (26, 40)
HEIGHT, WIDTH = 48, 320
CHARS = string.digits + string.ascii_letters


def model_path() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"


def characters(path: Path) -> list[str]:
    """The model's character list as rapidocr builds it: blank first, space last."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return ["blank", *meta["character"].splitlines(), " "]


def render(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n (text, image) pairs; images preprocessed to (n, 3, 48, 320)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = {s: ImageFont.truetype(str(FONT), s) for s in SIZES}
    texts, batch = [], []
    for i in range(n):
        text = "".join(rng.choice(list(CHARS), int(rng.integers(4, 17))))
        font = fonts[SIZES[i % len(SIZES)]]
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(4, 12))
        ink, paper = int(rng.integers(0, 60)), int(rng.integers(200, 256))
        img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (paper,) * 3)
        ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=(ink,) * 3)
        texts.append(text)
        batch.append(preprocess(np.asarray(img)[:, :, ::-1]))  # rapidocr reads BGR (cv2)
    return texts, np.stack(batch)


def preprocess(bgr: np.ndarray) -> np.ndarray:
    """rapidocr's TextRecognizer.resize_norm_img with max_wh_ratio = 320 / 48."""
    import cv2

    h, w = bgr.shape[:2]
    resized_w = min(WIDTH, int(math.ceil(HEIGHT * w / float(h))))
    img = cv2.resize(bgr, (resized_w, HEIGHT)).astype(np.float32).transpose(2, 0, 1) / 255
    img = (img - 0.5) / 0.5
    out = np.zeros((3, HEIGHT, WIDTH), np.float32)
    out[:, :, :resized_w] = img
    return out


def decode(probs: np.ndarray, chars: list[str]) -> str:
    """CTC greedy: argmax per step, repeats collapsed, blanks (index 0) dropped."""
    idx = probs.reshape(-1, len(chars)).argmax(-1)
    keep = [i for k, i in enumerate(idx) if i != 0 and (k == 0 or i != idx[k - 1])]
    return "".join(chars[i] for i in keep)


def runner(out_dir: Path, art: dict):
    """A function image (3, 48, 320) -> output array, for one artifact of the export report."""
    path = out_dir / art["path"]
    if art["format"] == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x[None]})[0]
    if art["format"] == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
        perm = art["inputs"][0]["perm"]

        def run(x):
            it.set_tensor(d_in["index"], np.ascontiguousarray(x[None].transpose(perm)))
            it.invoke()
            return it.get_tensor(d_out["index"])

        return run
    from edgepack.runtimes import get_runtime

    sess = get_runtime("ncnn").load(path)
    name = sess.input_names[0]
    return lambda x: next(iter(sess.run({name: x[None]}).values()))


def main() -> None:
    import edgepack

    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ppocr_rec"))
    ap.add_argument("--formats", default="onnx,tflite,ncnn")
    ap.add_argument("--min-cosine", type=float, default=None, help="the accuracy guard's floor for int8 (default: off)")
    ap.add_argument("--calib-method", default="minmax")
    args = ap.parse_args()
    src = model_path()
    chars = characters(src)
    texts, images = render(args.lines, seed=1)
    _, calib = render(200, seed=2)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "calib.npy", calib)
    report = edgepack.export(src, output_dir=args.out / "export", input_shape=f"1x3x{HEIGHT}x{WIDTH}",
                             formats=tuple(args.formats.split(",")), fp16=True, int8=True, calib=args.out / "calib.npy",
                             min_cosine=args.min_cosine, calib_method=args.calib_method)
    for art in report["artifacts"]:
        if art["precision"] == "int8" and art.get("float_nodes"):
            print(f"{art.get('path')}: {len(art['float_nodes'])} node(s) kept float by the accuracy guard")
    rows = [("original ONNX", "fp32", runner(args.out, {"format": "onnx", "path": src}))]
    for art in report["artifacts"]:
        if not art.get("path"):
            continue
        try:
            rows.append((art["path"], art["precision"], runner(args.out / "export", art)))
        except Exception as exc:  # an artifact that does not load is a row too
            print(f"{art['path']}: does not load: {str(exc).splitlines()[0][:200]}")
    base = None
    print(f"{len(texts)} rendered lines, DejaVu Sans at {SIZES} px; int8 calibrated on 200 other lines")
    print(f"{'artifact':40s} {'precision':9s} {'exact match':>11s} {'vs original':>11s}")
    for label, precision, run in rows:
        try:
            hits = sum(decode(run(img), chars).strip() == t for img, t in zip(images, texts))
        except Exception as exc:
            print(f"{label:40s} {precision:9s} fails to run: {str(exc).splitlines()[0][:150]}")
            continue
        rate = 100.0 * hits / len(texts)
        base = rate if base is None else base
        print(f"{label:40s} {precision:9s} {rate:10.1f}% {rate - base:+10.1f}")


if __name__ == "__main__":
    main()
