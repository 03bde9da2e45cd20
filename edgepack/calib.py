"""Calibration / verification data from files.

- a `.npy` array (N, ...) shaped like one model input as PyTorch takes it (batch dimension dropped,
  or the full input shape per sample), or a `.npz` with one array per input name: taken as
  model-ready input, no preprocessing applied;
- a folder of images (*.jpg *.jpeg *.png *.bmp *.webp) for a model with one 4-D image input,
  turned into model input by `preprocess_image` (order of operations in its docstring). The report
  records the preprocessing flags so that `pack` reproduces the same tensors bit-for-bit."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgepack.errors import UsageError
from edgepack.options import Preprocessing

if TYPE_CHECKING:  # Pillow is imported lazily: a device running bench/inspect needs no image code
    from PIL.Image import Image

RECOMMENDED_SAMPLES = 100  # fewer int8 calibration samples than this and the pipeline warns
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_samples(
    path: Path, shapes: dict[str, tuple[int, ...]], preprocessing: Preprocessing | None = None
) -> dict[str, np.ndarray]:
    """Return name -> float32 array (N, *shape[1:]) of per-batch-element samples.

    `path` is a `.npy`/`.npz` (model-ready arrays: `preprocessing` is not applied to them) or a folder
    of images, each turned into one sample by `preprocess_image` with `preprocessing`."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--calib {path} not found")
    if path.is_dir():
        return load_image_folder(path, shapes, preprocessing or Preprocessing())
    return _load_arrays(path, shapes)


def load_image_folder(path: Path, shapes: dict[str, tuple[int, ...]], preprocessing: Preprocessing) -> dict[str, np.ndarray]:
    """Images directly in `path` (not in sub-folders), sorted by file name, one sample each:
    name -> float32 (N, C, H, W), or (N, H, W, C) with layout "nhwc"."""
    path = Path(path)
    if len(shapes) != 1 or len(next(iter(shapes.values()))) != 4:
        found = ", ".join(f"{n!r} {list(s)}" for n, s in shapes.items())
        raise UsageError(
            f"--calib {path} is an image folder, which needs a model with exactly one 4-D image input; "
            f"the model has {found}: pass a .npz with one array per input name instead"
        )
    name, shape = next(iter(shapes.items()))
    _image_target(shape, preprocessing)  # check channels, layout and mean/std before reading any file
    files = sorted((f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS), key=lambda f: f.name)
    if not files:
        patterns = " ".join(f"*{e}" for e in IMAGE_EXTENSIONS)
        raise UsageError(
            f"--calib {path} holds no images ({patterns}, any case, sub-folders not read); "
            "add images there or pass a .npy/.npz file"
        )
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("--calib with an image folder needs Pillow: pip install pillow") from None
    samples = []
    for file in files:
        img = None
        try:
            img = Image.open(file)
            img.load()  # decode now: a truncated file fails here, not halfway through preprocessing
        except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
            if img is not None:
                img.close()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"--calib image {file} cannot be read ({reason}); remove or replace the file") from None
        with img:
            samples.append(preprocess_image(img, shape, preprocessing, source=str(file)))
    return {name: np.stack(samples)}


def preprocess_image(image: Image, shape: tuple[int, ...], preprocessing: Preprocessing, source: str = "image") -> np.ndarray:
    """One Pillow image -> one float32 sample shaped `shape[1:]` for a 4-D model input `shape`.

    `shape` is (1, C, H, W) with layout None or "nchw", (1, H, W, C) with "nhwc"; C is 1 or 3.
    The steps, in this order (a later `pack` must repeat them exactly to get the same bits):

    1. colour: `image.convert("RGB")` for C=3, `image.convert("L")` for C=1 (Pillow's ITU-R 601-2
       luma). Alpha is dropped, not composited; EXIF orientation is not applied (as torchvision's
       loaders do). Images with more than 8 bits per channel (modes I, I;16, F) are refused.
    2. resize, bilinear (`Image.resize(..., Image.BILINEAR)`, which Pillow antialiases when shrinking):
       - `resize=(N, N)` (square, also what `--resize N` gives): the shorter side becomes N and the
         longer `int(N * long / short)`, keeping the aspect ratio (torchvision `Resize(N)`);
       - `resize=(h, w)` with h != w: exactly h x w;
       - neither `resize` nor `crop`: exactly the model's H x W;
       - `crop` only: no resize.
       A size equal to the image's leaves it untouched.
    3. centre crop to `crop=(h, w)` if given: top = round((height - h) / 2), left = round((width - w) / 2)
       with Python's round (half to even), as torchvision `CenterCrop`.
    4. the size must now be the model's H x W, else UsageError.
    5. pixels 0..255 -> float32 array (H, W, C).
    6. `x = x * float32(scale)` if `scale` is given.
    7. channel order: RGB, reversed to BGR if `bgr`.
    8. `x = (x - mean) / std` per channel, mean and std as float32 in the channel order of step 7,
       each of length 1 or C; either may be given alone.
    9. layout: transposed to (C, H, W) unless "nhwc", which stays (H, W, C).
    """
    import PIL.Image  # the caller has an image, so Pillow is installed

    channels, height, width = _image_target(shape, preprocessing)
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise UsageError(
            f"--calib image {source} has Pillow mode {image.mode} (more than 8 bits per channel); "
            "image calibration reads 8-bit images: convert it to 8-bit PNG or JPEG"
        )
    img = image.convert("RGB" if channels == 3 else "L")
    resize, crop = preprocessing.resize, preprocessing.crop
    if resize is None and crop is None:
        size_wh = (width, height)  # exactly the model's size, even when it is square
    elif resize is not None:
        size_wh = _resized_wh(img.size, resize)
    else:
        size_wh = img.size
    img = img.resize(size_wh, PIL.Image.Resampling.BILINEAR)  # Pillow returns a plain copy at equal size
    if crop is not None:
        img = _center_crop(img, crop, source)
    if img.size != (width, height):
        raise UsageError(
            f"--calib image {source} is {img.height}x{img.width} (HxW) after --resize {_size(resize)} "
            f"and --crop {_size(crop)}; the model input needs {height}x{width}: pass --crop {height}x{width} "
            f"(with --resize N, N at least {max(height, width)}, to scale the shorter side first), "
            f"or neither flag to resize straight to {height}x{width}"
        )
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if preprocessing.scale is not None:
        x = x * np.float32(preprocessing.scale)
    if preprocessing.bgr:
        x = x[:, :, ::-1]
    if preprocessing.mean is not None:
        x = x - np.asarray(preprocessing.mean, dtype=np.float32)
    if preprocessing.std is not None:
        x = x / np.asarray(preprocessing.std, dtype=np.float32)
    if preprocessing.layout != "nhwc":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _image_target(shape: tuple[int, ...], preprocessing: Preprocessing) -> tuple[int, int, int]:
    """(C, H, W) of a 4-D image input, after checking C and the mean/std lengths."""
    nhwc = preprocessing.layout == "nhwc"
    _, a, b, c = shape
    channels, height, width = (c, a, b) if nhwc else (a, b, c)
    if channels not in (1, 3):
        hint = ""
        other = a if nhwc else c
        if other in (1, 3):
            hint = f"; if the input is {'NCHW' if nhwc else 'NHWC'} pass --layout {'nchw' if nhwc else 'nhwc'}"
        raise UsageError(
            f"model input has {channels} channels (shape {list(shape)}, layout {'nhwc' if nhwc else 'nchw'}); "
            f"image calibration supports 1 (grayscale) or 3 (RGB){hint}"
        )
    for flag, values in (("--mean", preprocessing.mean), ("--std", preprocessing.std)):
        if values is not None and len(values) not in (1, channels):
            raise UsageError(
                f"{flag} has {len(values)} values; the model input has {channels} channel(s): "
                f"give 1 value or {channels} (one per channel, in the model's channel order)"
            )
    return channels, height, width


def _resized_wh(size_wh: tuple[int, int], resize: tuple[int, int]) -> tuple[int, int]:
    """(width, height) to resize an image of `size_wh` (width, height) to; see `preprocess_image`."""
    rh, rw = resize
    if rh != rw:
        return (rw, rh)
    w, h = size_wh
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(rh * long / short)
    return (rh, new_long) if w <= h else (new_long, rh)


def _center_crop(img: Image, crop: tuple[int, int], source: str) -> Image:
    ch, cw = crop
    if ch > img.height or cw > img.width:
        raise UsageError(
            f"--calib image {source} is {img.height}x{img.width} (HxW) before --crop {_size(crop)}, smaller than the crop; "
            f"pass --resize at least {ch}x{cw} or a smaller --crop"
        )
    top = round((img.height - ch) / 2.0)
    left = round((img.width - cw) / 2.0)
    return img.crop((left, top, left + cw, top + ch))


def _size(size: tuple[int, int] | None) -> str:
    return "(none)" if size is None else f"{size[0]}x{size[1]}"


def _load_arrays(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UsageError(f"--calib {path} is not a readable .npy/.npz file ({str(exc).splitlines()[0]})") from None
    if isinstance(data, np.ndarray):
        if len(shapes) != 1:
            raise UsageError(f"--calib {path} holds one array but the model has inputs {list(shapes)}; pass a .npz with one array per input name")
        arrays = {next(iter(shapes)): data}
    else:
        missing = [n for n in shapes if n not in data.files]
        if missing:
            raise UsageError(f"--calib {path} has arrays {data.files}; missing input(s) {missing}")
        arrays = {n: data[n] for n in shapes}
    counts = set()
    out = {}
    for name, arr in arrays.items():
        shape = shapes[name]
        if arr.dtype.kind not in "fiub":
            raise UsageError(f"--calib array for input {name!r} has dtype {arr.dtype}; expected numbers (float32)")
        if tuple(arr.shape[1:]) == tuple(shape[1:]):
            samples = arr
        elif tuple(arr.shape[1:]) == tuple(shape) and shape[0] == 1:
            samples = arr.reshape((arr.shape[0],) + tuple(shape[1:]))
        else:
            raise UsageError(
                f"--calib array for input {name!r} has shape {list(arr.shape)}; expected (N, {', '.join(map(str, shape[1:]))}) "
                f"for input shape {list(shape)}"
            )
        with np.errstate(over="ignore"):  # a float64 value beyond float32's range: Inf, named below
            out[name] = samples.astype(np.float32)
        check_finite(out[name], f"--calib {path} input {name!r}")
        counts.add(samples.shape[0])
    if len(counts) != 1:
        raise UsageError(f"--calib arrays have different sample counts {sorted(counts)}; give the same N for every input")
    if next(iter(counts)) == 0:
        raise UsageError(f"--calib {path} has no samples")
    return out


def check_finite(samples: np.ndarray, what: str) -> None:
    """NaN/Inf in data (or a float64 value beyond float32's range) is an error naming the first
    sample that holds one: calibration ranges and verification would be meaningless."""
    bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise UsageError(f"{what}: sample {first} (of {len(samples)}) holds NaN or Inf"
                         + (f", and {int(bad.sum()) - 1} more sample(s)" if bad.sum() > 1 else "")
                         + "; remove or fix those samples (values must be finite float32)")
