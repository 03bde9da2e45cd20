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
        ExportOptions.create(tmp_path, formats="onnx,coreml")
    with pytest.raises(UsageError, match="name each"):
        ExportOptions.create(tmp_path, input_shape=(InputSpec(None, (1, 2)), InputSpec("b", (1, 2))))
    with pytest.raises(UsageError, match="opset"):
        ExportOptions.create(tmp_path, opset=13)
    with pytest.raises(UsageError, match="module:factory"):
        ExportOptions.create(tmp_path, arch="mymodels.make")
    with pytest.raises(UsageError, match="layout"):
        Preprocessing(layout="chw")
    assert ExportOptions.create(tmp_path, formats="ONNX, onnx").target.formats == ("onnx",)


def test_capability_table():
    assert parse_formats("onnx,tflite") == ("onnx", "tflite")
    assert check_buildable("onnx", "fp32").runtime == "onnxruntime"
    assert check_buildable("tflite", "int8").runtime == "litert"
    assert check_buildable("ncnn", "int8").runtime == "ncnn"
    with pytest.raises(UnsupportedError, match="does not support precision 'int8-weights'"):
        check_buildable("ncnn", "int8-weights")
    with pytest.raises(UnsupportedError, match="does not support precision 'int4'"):
        check_buildable("tflite", "int4")


def test_every_format_row_has_exactly_its_builders():
    """One table: the precisions a format row lists are the builders its module defines."""
    from edgepack.artifacts import artifact_builders
    from edgepack.formats import FORMATS

    for name, fmt in FORMATS.items():
        assert sorted(artifact_builders(name)) == sorted(fmt.precisions), name


def test_cli_flags_and_python_api_come_from_the_same_option_fields():
    """Every export option field is a flag of `edgepack export` whose click destination is the field
    name, and a keyword of edgepack.export (ExportOptions.create); nothing else is."""
    from edgepack.cli import cli
    from edgepack.options import option_fields

    command = cli.commands["export"]
    dests = {p.name: p for p in command.params if p.name not in ("model", "output_dir", "as_json", "debug")}
    fields = {f.name: o for _, f, o in option_fields() if o.cli}
    assert set(dests) == set(fields)
    for name, o in fields.items():
        assert o.flag_for(name) in dests[name].opts
    api_only = [f.name for _, f, o in option_fields() if not o.cli]
    assert api_only == ["verify_samples", "holdout_fraction"]
    # flat keywords land in their group, text goes through the field's parser
    opts = ExportOptions.create("out", formats="tflite,onnx", input_shape="x:1x3x8x8", mean="0.5,0.25", resize=8,
                                int8=True, calib="c.npy", tolerance=1e-3)
    assert opts.target.formats == ("tflite", "onnx")
    assert opts.source.input_shape == (InputSpec("x", (1, 3, 8, 8)),)
    assert opts.preprocessing.mean == (0.5, 0.25) and opts.preprocessing.resize == (8, 8)
    assert opts.precisions == ("fp32", "int8") and opts.verify.tolerance == 1e-3
    with pytest.raises(UsageError, match="unknown export option.*tflite_nchw_io"):
        ExportOptions.create("out", tflite_nchw_io=True)


@pytest.mark.parametrize("kw, match", [
    ({"tolerance": -1.0}, "--tolerance"), ({"tolerance": float("nan")}, "--tolerance"), ({"seed": -1}, "--seed"),
    ({"min_cosine": float("nan"), "fp16": True}, "--min-cosine"), ({"opset": 99999}, "opset"),
    ({"name": "a\nb"}, "--name"), ({"name": "x" * 300}, "--name"), ({"mean": "nan"}, "--mean"),
])
def test_option_values_are_checked_up_front(kw, match):
    with pytest.raises(UsageError, match=match):
        ExportOptions.create("out", **kw)
