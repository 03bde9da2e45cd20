"""Download size of `edgepack pack` bundles with and without weight sharing (--cluster K), side by
side in one run, on the shipped digits CNN: for each TFLite precision and K, the deflated size of
the model before (the exported artifact) and after (the packed, clustered model with its metadata
and labels), the ratio, top-1 accuracy on the 360 held-out test digits before and after, and the
cosine of the packed model's logits against the PyTorch reference on verify.npz.

    python benchmarks/bench_pack.py [--clusters 8,16,32] [--keep DIR]

With EDGEPACK_TFLITE_SUPPORT_PYTHON set to a Python that has tflite-support 0.4.4 (a separate
venv: it pins protobuf<4 and numpy<2), it also prints what TFLite Support's MetadataDisplayer reads
from the fp32 bundle's model."""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path

import edgepack
from edgepack.commands.pack import PackOptions, pack

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", default="8,16,32")
    parser.add_argument("--keep", type=Path, default=None, help="keep the export and bundles here")
    args = parser.parse_args()
    ks = [int(k) for k in args.clusters.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        out = base / "export"
        edgepack.export(EXAMPLES / "digits_cnn.pt2", output_dir=out, formats="tflite", target="rpi4", int8=True,
                        fp16=True, calib=EXAMPLES / "digits_calib.npy", eval_data=EXAMPLES / "digits_test.npz")
        print(f"{'precision':9s} {'K':>4s} {'deflated before':>16s} {'after':>8s} {'ratio':>6s} "
              f"{'top-1 before':>12s} {'after':>7s} {'cosine':>8s}")
        for precision in ("fp32", "fp16", "int8"):
            for k in [None, *ks]:
                s = pack(PackOptions(export_dir=out, platform="rpi", output=base / f"{precision}-{k}.zip",
                                     labels=EXAMPLES / "digits_labels.txt", precision=precision, cluster=k,
                                     eval_data=EXAMPLES / "digits_test.npz"))
                after = s["files"][0]["deflated_bytes"]
                before = s["source"]["deflated_bytes"]
                acc = s["verification"]["accuracy"]
                print(f"{precision:9s} {k or '-':>4} {before:16d} {after:8d} {before / after:6.2f} "
                      f"{acc['export_top1']:12.2%} {acc['packed_top1']:7.2%} {s['verification']['fidelity']['cosine']:8.5f}")
        helper = os.environ.get("EDGEPACK_TFLITE_SUPPORT_PYTHON")
        if helper:
            model = base / "fp32.tflite"
            model.write_bytes(zipfile.ZipFile(base / "fp32-None.zip").read("digits_cnn.tflite"))
            code = ("import sys; from tflite_support import metadata as m; d = m.MetadataDisplayer.with_model_file(sys.argv[1]);"
                    " print(d.get_metadata_json()); print('packed files:', d.get_packed_associated_file_list())")
            proc = subprocess.run([helper, "-c", code, str(model)], check=False, capture_output=True, text=True)
            print("TFLite Support MetadataDisplayer:")
            print(proc.stdout if proc.returncode == 0 else proc.stderr)
        else:
            print("(set EDGEPACK_TFLITE_SUPPORT_PYTHON to also read the metadata with tflite-support)")


if __name__ == "__main__":
    main()
