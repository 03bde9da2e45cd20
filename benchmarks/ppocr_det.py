"""PP-OCRv4 text detector (real weights, from rapidocr-onnxruntime 1.4.4): every exported artifact
next to the original ONNX on rendered pages: the export's own verdict (ok, cosine, worst slice),
then, on pages it did not see, the cosine of the probability map and the IoU of the text mask
(probability > 0.3, rapidocr's `thresh`) with the original's.

Pages: 320x320, 2-5 lines of 4-16 digits and Latin letters each, DejaVu Sans (Debian's
fonts-dejavu-core) at 18-40 px, random ink/paper grey levels and positions, fixed seeds;
preprocessing as rapidocr's detector ((x/255 - 0.5)/0.5 on BGR). int8 is calibrated on 64 other
pages.

    pip install rapidocr-onnxruntime==1.4.4; apt-get install -y fonts-dejavu-core
    python benchmarks/ppocr_det.py [--pages 40] [--out /tmp/ppocr_det] [--formats onnx,tflite,ncnn]
"""
from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SIDE = 320
CHARS = string.digits + string.ascii_letters
THRESH = 0.3  # rapidocr's Det.thresh


def model_path() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"


def render(n: int, seed: int) -> np.ndarray:
    """n pages, preprocessed to (n, 3, SIDE, SIDE)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(n):
        paper, ink = int(rng.integers(190, 256)), int(rng.integers(0, 70))
        img = Image.new("RGB", (SIDE, SIDE), (paper,) * 3)
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(4, 30))
        for _ in range(int(rng.integers(2, 6))):
            font = ImageFont.truetype(str(FONT), int(rng.integers(18, 41)))
            text = "".join(rng.choice(list(CHARS), int(rng.integers(4, 17))))
            left, top, right, bottom = font.getbbox(text)
            x = int(rng.integers(0, max(1, SIDE - (right - left))))
            if y + bottom - top > SIDE:
                break
            draw.text((x - left, y - top), text, font=font, fill=(ink,) * 3)
            y += bottom - top + int(rng.integers(8, 30))
        bgr = np.asarray(img, np.float32)[:, :, ::-1]
        pages.append(((bgr / 255 - 0.5) / 0.5).transpose(2, 0, 1))
    return np.stack(pages).astype(np.float32)


def main() -> None:
    import edgepack
    from ppocr_rec import runner  # noqa: E402  (same folder: one runner per artifact format)

    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ppocr_det"))
    ap.add_argument("--formats", default="onnx,tflite,ncnn")
    ap.add_argument("--calib-method", default="minmax")
    args = ap.parse_args()
    pages = render(args.pages, seed=1)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "calib.npy", render(64, seed=2))
    report = edgepack.export(model_path(), output_dir=args.out / "export", input_shape=f"1x3x{SIDE}x{SIDE}",
                             formats=tuple(args.formats.split(",")), fp16=True, int8=True, calib=args.out / "calib.npy",
                             calib_method=args.calib_method)
    original = runner(args.out, {"format": "onnx", "path": model_path()})
    ref = np.stack([original(p) for p in pages]).astype(np.float64)
    ref_mask = ref > THRESH
    print(f"{len(pages)} rendered pages {SIDE}x{SIDE}; text pixels in the original's mask: {ref_mask.mean():.1%}")
    print(f"{'artifact':38s} {'export verdict':44s} {'map cosine':>10s} {'mask IoU':>8s}")
    for art in report["artifacts"]:
        fid = art.get("fidelity") or {}
        verdict = ("ok" if art["ok"] else "FAILS") + (f" cos {fid['cosine']:.4f}" if fid.get("cosine") is not None else "")
        if fid.get("worst_slice"):
            verdict += f" slice {fid['worst_slice']['cosine']:.4f}"
        if not art["ok"] and art.get("error"):
            verdict += f" ({art['error'][:60]}...)"
        label = art.get("path") or f"{art['format']} {art['precision']}"
        if not art.get("path") or not (args.out / "export" / art["path"]).exists():
            print(f"{label:38s} {verdict[:44]:44s}   not built")
            continue
        try:
            run = runner(args.out / "export", art)
            got = np.stack([run(p) for p in pages]).astype(np.float64)
        except Exception as exc:  # an artifact that does not run is a row too
            print(f"{label:38s} {verdict[:44]:44s}   does not run: {str(exc).splitlines()[0][:80]}")
            continue
        cos = float((ref * got).sum() / np.sqrt((ref * ref).sum() * (got * got).sum()))
        mask = got > THRESH
        iou = float((mask & ref_mask).sum() / max((mask | ref_mask).sum(), 1))
        print(f"{label:38s} {verdict[:44]:44s} {cos:10.4f} {iou:8.3f}")
    print("failing their floor:", sum(not a["ok"] for a in report["artifacts"]), "of", len(report["artifacts"]))


if __name__ == "__main__":
    main()
