"""Config building, overrides and validation errors."""
from __future__ import annotations

import json

import pytest

import config as config_module
import main
from config import ConfigError, build_config, validate


def test_presets_build_and_validate():
    for name in ("demo", "voc", "folder"):
        cfg = build_config(name)
        assert cfg.preset == name
    cfg = build_config("voc")
    assert cfg.classifier.backbone == "vgg16_bn"
    assert cfg.attention.target_layer == "features.42"
    assert cfg.attention.threshold == 0.4 and cfg.saliency.threshold == 0.5
    assert cfg.deeplab.backbone == "resnet101" and cfg.deeplab.crop_size == 321
    assert len(cfg.class_names) == 20
    validate(build_config("demo"))


def test_overrides_are_typed():
    cfg = build_config("demo", ["classifier.steps=7", "attention.scales=1.0, 0.5,1.5",
                                "attention.flip=true", "runtime.device=cpu",
                                "class_names=a,b", "guide.crf_iterations=3"])
    assert cfg.classifier.steps == 7 and isinstance(cfg.classifier.steps, int)
    assert cfg.attention.scales == [1.0, 0.5, 1.5]
    assert cfg.attention.flip is True
    assert cfg.class_names == ["a", "b"]


@pytest.mark.parametrize("override, message", [
    ("classifier.nope=1", "classifier.nope: unknown setting"),
    ("nosection.steps=1", "unknown section 'nosection'"),
    ("classifier.steps=ten", "classifier.steps: cannot read 'ten' as int"),
    ("attention.flip=maybe", "attention.flip: cannot read 'maybe' as bool"),
    ("classifier.steps", "expected section.key=value"),
])
def test_bad_overrides_name_the_setting(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("demo", [override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset 'nope' is unknown"):
        build_config("nope")


@pytest.mark.parametrize("override, message", [
    ("deeplab.gt_percentage=120", "deeplab.gt_percentage: 120.0 is not a percentage"),
    ("classifier.backbone=vgg19", "classifier.backbone: 'vgg19' is not one of"),
    ("attention.threshold=1.5", r"attention.threshold: 1.5 is outside \[0, 1\]"),
    ("classifier.batch_size=0", "classifier.batch_size: must be positive"),
    ("runtime.device=gpu", "runtime.device: 'gpu'"),
    ("dataset.kind=voc", "dataset.root: .* is not a folder"),
    ("classifier.weights_path=/no/such/file.pth", "classifier.weights_path: /no/such/file.pth does not exist"),
    ("attention.scales=", "attention.scales: need one or more positive scales"),
])
def test_validation_errors_name_the_setting(override, message):
    cfg = build_config("demo", [override])
    if override.startswith("dataset.kind"):
        cfg.dataset.root = "/no/such/folder"
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_all_problems_reported_together():
    cfg = build_config("demo", ["deeplab.gt_percentage=-1", "guide.rule=magic"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert "gt_percentage" in str(info.value) and "guide.rule" in str(info.value)


def test_wrong_type_set_in_code_is_caught():
    cfg = build_config("demo")
    cfg.classifier.steps = "100"
    with pytest.raises(ConfigError, match="classifier.steps: expected int"):
        validate(cfg)


def test_paths_resolve_relative_to_project(tmp_path):
    cfg = build_config("demo")
    assert cfg.path("tmp") == config_module.PROJECT_ROOT / "tmp"
    assert cfg.path(str(tmp_path)) == tmp_path
    assert json.loads(cfg.to_json())["classifier"]["backbone"] == cfg.classifier.backbone


def test_main_rejects_bad_input_before_any_work(capsys, tmp_path):
    assert main.main(["--stages", "train_seed,fly", "--set", f"paths.runs={tmp_path}"]) == 2
    assert "unknown fly" in capsys.readouterr().err
    assert main.main(["--set", "classifier.steps=x"]) == 2
    assert not any(tmp_path.iterdir())


def test_main_stage_selection_keeps_pipeline_order():
    assert main.select_stages("eval_deeplab,train_seed") == ["train_seed", "eval_deeplab"]
    assert main.STAGE_NAMES[0] == "train_saliency"


def test_help_lists_stages_and_presets(capsys):
    with pytest.raises(SystemExit):
        main.parse_args(["--help"])
    out = capsys.readouterr().out
    for name in main.STAGE_NAMES + list(config_module.PRESETS):
        assert name in out
