"""Device profile schema, option validation and the format capability table."""
from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from edgepack.devices import DeviceProfile, list_profiles, load_profile
from edgepack.errors import UnsupportedError, UsageError
from edgepack.formats import check_buildable, parse_formats
from edgepack.options import ExportOptions, InputSpec, Preprocessing


def _rpi4_data() -> dict:
    return tomllib.loads((resources.files("edgepack.devices") / "profiles" / "rpi4.toml").read_text())


def test_required_profiles_exist_with_default_input():
    assert {"rpi4", "rpi5", "android-mid", "host"} <= set(list_profiles())
    for name in ("rpi4", "rpi5", "android-mid", "host"):
        profile = load_profile(name)
        assert profile.name == name
        assert len(profile.default_input_shape) == 4 and profile.default_input_shape[0] == 1


def test_profile_schema_rejects_unknown_and_names_missing_keys():
    data = _rpi4_data()
    with pytest.raises(UsageError, match=r"unknown key\(s\) \['trheads'\]"):
        DeviceProfile.from_mapping({**data, "trheads": 4}, "x.toml")
    data.pop("cores")
    with pytest.raises(UsageError, match=r"missing key\(s\) \['cores'\]"):
        DeviceProfile.from_mapping(data, "x.toml")


def test_profile_rejects_bad_values_and_is_frozen():
    with pytest.raises(UsageError, match="default_runtime"):
        DeviceProfile.from_mapping({**_rpi4_data(), "default_runtime": "tensorflow"}, "x.toml")
    profile = load_profile("rpi4")
    with pytest.raises(AttributeError):
        profile.threads = 1  # type: ignore[misc]
    with pytest.raises(UsageError, match="unknown target 'rpi9'"):
        load_profile("rpi9")


def test_input_spec_parsing():
    assert InputSpec.parse("1x3x224x224") == InputSpec(None, (1, 3, 224, 224))
    assert InputSpec.parse("image:1x3x32x32") == InputSpec("image", (1, 3, 32, 32))
    for bad in ("1x3xax4", "0x3x4x4", "", "img:"):
        with pytest.raises(UsageError, match="not a shape"):
            InputSpec.parse(bad)


def test_export_options_validation(tmp_path):
    with pytest.raises(UsageError, match="unknown format"):
        ExportOptions(output_dir=tmp_path, formats="onnx,coreml")
    with pytest.raises(UsageError, match="name each"):
        ExportOptions(output_dir=tmp_path, inputs=(InputSpec(None, (1, 2)), InputSpec("b", (1, 2))))
    with pytest.raises(UsageError, match="opset"):
        ExportOptions(output_dir=tmp_path, opset=13)
    with pytest.raises(UsageError, match="module:factory"):
        ExportOptions(output_dir=tmp_path, arch="mymodels.make")
    with pytest.raises(UsageError, match="layout"):
        Preprocessing(layout="chw")
    assert ExportOptions(output_dir=tmp_path, formats="ONNX, onnx").formats == ("onnx",)


def test_capability_table():
    assert parse_formats("onnx,tflite") == ("onnx", "tflite")
    assert check_buildable("onnx", "fp32").built
    assert check_buildable("tflite", "fp16").built
    assert check_buildable("ncnn", "fp16").built and check_buildable("ncnn", "int8").built
    with pytest.raises(UnsupportedError, match="does not support precision 'int8-weights'"):
        check_buildable("ncnn", "int8-weights")
    assert check_buildable("tflite", "int8").built
    assert check_buildable("tflite", "int8-weights").built
    with pytest.raises(UnsupportedError, match="does not support precision 'int4'"):
        check_buildable("tflite", "int4")
