"""Image-folder calibration data: exact pixel values after each preprocessing step, and the errors.

References are numpy reimplementations of the documented order of operations; only the bilinear
resize itself is delegated to Pillow (the same call the product makes), everything around it
(sizes, crop offsets, scale, channel order, mean/std, layout) is recomputed here."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from edgepack.calib import load_samples
from edgepack.errors import UsageError
from edgepack.options import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _gradient(height: int = 21, width: int = 30) -> np.ndarray:
    """uint8 (H, W, 3): R = 10*row, G = 8*col, B = (30*row + col) % 256; every pixel distinct."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([10 * rows, 8 * cols, (30 * rows + cols) % 256], axis=-1).astype(np.uint8)


def _save(folder, name: str, pixels: np.ndarray, **kwargs) -> None:
    folder.mkdir(exist_ok=True)
    Image.fromarray(pixels).save(folder / name, **kwargs)


def _normalize(pixels: np.ndarray, scale=None, mean=None, std=None, bgr=False) -> np.ndarray:
    """Steps 5-8 of preprocess_image in numpy: (H, W, C) uint8 -> float32 (H, W, C)."""
    x = pixels.astype(np.float32)
    if scale is not None:
        x = x * np.float32(scale)
    if bgr:
        x = x[:, :, ::-1]
    if mean is not None:
        x = x - np.float32(mean)
    if std is not None:
        x = x / np.float32(std)
    return x


def test_center_crop_exact_pixels_with_scale_mean_std(tmp_path):
    pixels = _gradient(21, 30)
    _save(tmp_path / "imgs", "g.png", pixels)
    pre = Preprocessing(crop=(8, 10), scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    got = load_samples(tmp_path / "imgs", {"x": (1, 3, 8, 10)}, pre)["x"]
    assert got.shape == (1, 3, 8, 10) and got.dtype == np.float32
    # top = round((21 - 8) / 2) = round(6.5) = 6 (half to even, as torchvision); left = (30 - 10) / 2 = 10
    region = pixels[6:14, 10:20]
    expected = _normalize(region, 1 / 255, pre.mean, pre.std).transpose(2, 0, 1)
    np.testing.assert_array_equal(got[0], expected)
    # spot check by hand: red at crop (0, 0) is source row 6 -> 60
    assert got[0, 0, 0, 0] == pytest.approx((60 / 255 - 0.5) / 0.2, abs=1e-6)
    assert got[0, 1, 0, 0] == pytest.approx((80 / 255 - 0.4) / 0.25, abs=1e-6)  # green: source col 10 -> 80


def test_bgr_reverses_channels_and_nhwc_layout(tmp_path):
    pixels = _gradient(21, 30)
    _save(tmp_path / "imgs", "g.png", pixels)
    rgb = load_samples(tmp_path / "imgs", {"x": (1, 3, 8, 10)}, Preprocessing(crop=(8, 10)))["x"][0]
    pre = Preprocessing(crop=(8, 10), bgr=True, layout="nhwc", mean=(1.0, 2.0, 3.0))
    got = load_samples(tmp_path / "imgs", {"x": (1, 8, 10, 3)}, pre)["x"]
    assert got.shape == (1, 8, 10, 3)
    region = pixels[6:14, 10:20].astype(np.float32)
    # mean is in the model's channel order (after --bgr): 1 is taken from blue, 3 from red
    np.testing.assert_array_equal(got[0, :, :, 0], region[:, :, 2] - 1)
    np.testing.assert_array_equal(got[0, :, :, 1], region[:, :, 1] - 2)
    np.testing.assert_array_equal(got[0, :, :, 2], region[:, :, 0] - 3)
    np.testing.assert_array_equal(got[0] + np.float32([1, 2, 3]), rgb.transpose(1, 2, 0)[:, :, ::-1])


@pytest.mark.parametrize("portrait", [False, True])
def test_square_resize_scales_the_shorter_side_keeping_aspect_ratio(tmp_path, portrait):
    # three 40-pixel stripes red | green | blue across the long side of a 40x120 image
    stripes = np.zeros((40, 120, 3), np.uint8)
    for i in range(3):
        stripes[:, 40 * i : 40 * (i + 1), i] = 255
    if portrait:
        stripes = stripes.transpose(1, 0, 2).copy()
    _save(tmp_path / "imgs", "s.png", stripes)
    got = load_samples(tmp_path / "imgs", {"x": (1, 3, 20, 20)}, Preprocessing(resize=(20, 20), crop=(20, 20)))["x"][0]
    got = got.transpose(1, 2, 0)
    # shorter side 40 -> 20, longer 120 -> 60; the centre 20 of 60 is the green stripe. Had the image
    # been squashed to 20x20 instead, the crop would be all of it, red and blue included.
    inner = got[:, 1:19] if not portrait else got[1:19, :]
    np.testing.assert_array_equal(inner, np.broadcast_to(np.float32([0, 255, 0]), inner.shape))
    assert got[..., 0].max() < 128 and got[..., 2].max() < 128  # only the blended edge sees red/blue
    resized = np.asarray(Image.fromarray(stripes).resize((20, 60) if portrait else (60, 20), Image.Resampling.BILINEAR))
    expected = resized[20:40, :] if portrait else resized[:, 20:40]
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_non_square_resize_is_exact_and_no_flags_resize_to_model_size(tmp_path):
    pixels = _gradient(40, 40)
    _save(tmp_path / "imgs", "g.png", pixels)
    got = load_samples(tmp_path / "imgs", {"x": (1, 3, 10, 30)}, Preprocessing(resize=(10, 30)))["x"][0]
    expected = np.asarray(Image.fromarray(pixels).resize((30, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got, expected.transpose(2, 0, 1).astype(np.float32))
    # neither --resize nor --crop: straight to the model's H x W, same result
    same = load_samples(tmp_path / "imgs", {"x": (1, 3, 10, 30)})["x"][0]
    np.testing.assert_array_equal(same, got)
    # ... also for a square model and a non-square image: squashed, not the shorter-side rule
    wide = _gradient(21, 30)
    _save(tmp_path / "wide", "w.png", wide)
    squashed = load_samples(tmp_path / "wide", {"x": (1, 3, 12, 12)})["x"][0]
    expected = np.asarray(Image.fromarray(wide).resize((12, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(squashed, expected.transpose(2, 0, 1).astype(np.float32))


def test_imagenet_pipeline_on_real_photos(tmp_path):
    """torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize(ImageNet), reimplemented."""
    photos = load_sample_images()
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in photos.filenames:  # china.jpg, flower.jpg: real JPEG files, decoded by the loader
        shutil.copy(src, folder)
    pre = Preprocessing(resize=(256, 256), crop=(224, 224), scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    got = load_samples(folder, {"input": (1, 3, 224, 224)}, pre)["input"]
    assert got.shape == (2, 3, 224, 224) and got.dtype == np.float32
    for i, name in enumerate(["china.jpg", "flower.jpg"]):  # sorted by name
        img = Image.open(folder / name).convert("RGB")
        assert img.size == (640, 427)
        resized = np.asarray(img.resize((383, 256), Image.Resampling.BILINEAR))  # int(256 * 640 / 427) = 383
        region = resized[16:240, 80:304]  # top (256-224)/2 = 16, left round(159/2) = round(79.5) = 80
        expected = _normalize(region, 1 / 255, IMAGENET_MEAN, IMAGENET_STD).transpose(2, 0, 1)
        np.testing.assert_array_equal(got[i], expected)
        # ToTensor divides by 255 where edgepack multiplies by float32(1/255): at most an ulp apart
        torch_like = ((region.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(2, 0, 1)
        np.testing.assert_allclose(got[i], torch_like, atol=1e-5, rtol=0)
    assert not np.array_equal(got[0], got[1])
    assert -2.2 < got.min() < -1.5 and 2.0 < got.max() < 2.7  # ImageNet-normalized range


def test_digits_png_grayscale_exact_and_sorted_by_name(tmp_path):
    digits = load_digits().images[:12]  # 8x8, values 0..16
    pixels = [np.kron(np.round(d * 255 / 16).astype(np.uint8), np.ones((4, 4), np.uint8)) for d in digits]  # 32x32
    for i, p in enumerate(pixels):
        _save(tmp_path / "digits", f"{i}.png", p)
    got = load_samples(tmp_path / "digits", {"x": (1, 1, 32, 32)}, Preprocessing(scale=1 / 255))["x"]
    assert got.shape == (12, 1, 32, 32)
    order = sorted(f"{i}.png" for i in range(12))  # 0, 1, 10, 11, 2, ...
    expected = np.stack([pixels[int(n[:-4])][None].astype(np.float32) * np.float32(1 / 255) for n in order])
    np.testing.assert_array_equal(got, expected)
    nhwc = load_samples(tmp_path / "digits", {"x": (1, 32, 32, 1)}, Preprocessing(layout="nhwc"))["x"]
    np.testing.assert_array_equal(nhwc[..., 0], np.stack([pixels[int(n[:-4])] for n in order]).astype(np.float32))


def test_rgb_image_becomes_luma_for_one_channel_input(tmp_path):
    pixels = _gradient(21, 30)
    _save(tmp_path / "imgs", "g.png", pixels)
    got = load_samples(tmp_path / "imgs", {"x": (1, 1, 8, 10)}, Preprocessing(crop=(8, 10)))["x"]
    assert got.shape == (1, 1, 8, 10)
    r, g, b = (pixels[6:14, 10:20, c].astype(np.float64) for c in range(3))
    luma = 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R 601-2; Pillow rounds in fixed point
    assert np.abs(got[0, 0] - luma).max() <= 0.5 + 1e-3


def test_extensions_any_case_non_recursive(tmp_path):
    folder = tmp_path / "mixed"
    values = {"a.PNG": 10, "b.jpeg": 60, "c.Bmp": 110, "d.webp": 160, "e.JPG": 210}
    for name, v in values.items():
        _save(folder, name, np.full((8, 8), v, np.uint8), **({"lossless": True} if name.endswith("webp") else {}))
    (folder / "notes.txt").write_text("not an image")
    _save(folder / "sub", "z.png", np.zeros((8, 8), np.uint8))
    got = load_samples(folder, {"x": (1, 1, 8, 8)})["x"]
    assert got.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(got.reshape(5, -1).mean(axis=1), list(values.values()), atol=1.0)  # JPEG: +-1


def test_image_folder_errors(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    _save(empty / "nested", "deep.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UsageError, match=r"empty holds no images \(\*\.jpg \*\.jpeg \*\.png \*\.bmp \*\.webp"):
        load_samples(empty, {"x": (1, 3, 8, 8)})

    bad = tmp_path / "bad"
    _save(bad, "a.png", np.zeros((8, 8, 3), np.uint8))
    (bad / "x.png").write_bytes(b"\x00garbage, not a PNG" * 10)
    with pytest.raises(UsageError, match=r"image .*x\.png cannot be read"):
        load_samples(bad, {"x": (1, 3, 8, 8)})

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "china.jpg").write_bytes(Path(load_sample_images().filenames[0]).read_bytes()[:4000])
    with pytest.raises(UsageError, match=r"china\.jpg cannot be read"):
        load_samples(truncated, {"x": (1, 3, 8, 8)})

    ok = tmp_path / "ok"
    _save(ok, "g.png", _gradient(21, 30))
    with pytest.raises(UsageError, match=r"model input has 4 channels .*supports 1 \(grayscale\) or 3 \(RGB\)$"):
        load_samples(ok, {"x": (1, 4, 8, 8)})
    with pytest.raises(UsageError, match=r"has 8 channels .*pass --layout nhwc"):
        load_samples(ok, {"x": (1, 8, 8, 3)})
    with pytest.raises(UsageError, match=r"--mean has 2 values; the model input has 3 channel"):
        load_samples(ok, {"x": (1, 3, 8, 10)}, Preprocessing(mean=(0.5, 0.5), crop=(8, 10)))
    with pytest.raises(UsageError, match=r"--std has 3 values; the model input has 1 channel"):
        load_samples(ok, {"x": (1, 1, 8, 10)}, Preprocessing(std=(1.0, 2.0, 3.0), crop=(8, 10)))
    # 21x30 -> shorter side 16 -> 16x22 (int(16 * 30 / 21) = 22), not the model's 8x10
    expected = (
        r"is 16x22 \(HxW\) after --resize 16x16 and --crop \(none\); the model input needs 8x10: "
        r"pass --crop 8x10 \(with --resize N, N at least 10.*or neither flag to resize straight to 8x10"
    )
    with pytest.raises(UsageError, match=expected):
        load_samples(ok, {"x": (1, 3, 8, 10)}, Preprocessing(resize=(16, 16)))
    with pytest.raises(UsageError, match=r"is 21x30 \(HxW\) before --crop 32x32, smaller than the crop"):
        load_samples(ok, {"x": (1, 3, 32, 32)}, Preprocessing(crop=(32, 32)))
    with pytest.raises(UsageError, match=r"needs a model with exactly one 4-D image input; the model has 'a' \[1, 3, 8, 8\], 'b' \[1, 4\]"):
        load_samples(ok, {"a": (1, 3, 8, 8), "b": (1, 4)})
    with pytest.raises(UsageError, match=r"exactly one 4-D image input"):
        load_samples(ok, {"x": (1, 3, 8)})

    deep = tmp_path / "deep"
    _save(deep, "d.png", np.full((8, 8), 40000, np.uint16))  # 16-bit PNG, Pillow mode I;16
    with pytest.raises(UsageError, match=r"d\.png has Pillow mode I;16 .*convert it to 8-bit"):
        load_samples(deep, {"x": (1, 1, 8, 8)})

    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with pytest.raises(UsageError, match=r"needs Pillow: pip install pillow"):
        load_samples(ok, {"x": (1, 3, 8, 8)})


def test_npy_keeps_its_behaviour_and_messages_with_preprocessing(tmp_path):
    arr = np.arange(5 * 3 * 8 * 8, dtype=np.float64).reshape(5, 3, 8, 8)
    np.save(tmp_path / "a.npy", arr)
    pre = Preprocessing(scale=1 / 255, mean=(0.5,), bgr=True, resize=(4, 4))
    got = load_samples(tmp_path / "a.npy", {"x": (1, 3, 8, 8)}, pre)["x"]
    np.testing.assert_array_equal(got, arr.astype(np.float32))  # model-ready: preprocessing not applied
    with pytest.raises(UsageError, match=r"has shape \[5, 3, 8, 8\]; expected \(N, 3, 16, 16\) for input shape \[1, 3, 16, 16\]"):
        load_samples(tmp_path / "a.npy", {"x": (1, 3, 16, 16)}, pre)
