"""Config building, overrides and validation errors."""
from __future__ import annotations

import json

import pytest

import config as config_module
import main
from config import ConfigError, build_config, validate


@pytest.mark.parametrize("preset", ["demo", "voc", "folder", "msrc"])
def test_every_preset_builds_and_validates_once_its_data_exists(preset, tmp_path):
    cfg = build_config(preset)
    assert cfg.preset == preset
    if cfg.dataset.kind != "synthetic":
        cfg.dataset.root = str(tmp_path)
    if preset in ("voc", "msrc"):
        cfg.saliency.train_root = str(tmp_path)
        cfg.saliency.val_root = ""
    validate(cfg)  # no stage: no saliency data needed yet
    stages = ["train_saliency", "create_saliency", "train_seed"]
    if preset == "folder":  # real photos need a saliency network chosen: refused until one is
        with pytest.raises(ConfigError, match="saliency.checkpoint .* or saliency.train_root"):
            validate(cfg, stages)
        cfg.saliency.train_root = str(tmp_path)
    validate(cfg, stages)


def test_voc_preset_keeps_the_thesis_settings():
    cfg = build_config("voc")
    assert cfg.classifier.backbone == "vgg16_bn"
    assert cfg.attention.target_layer == "features.42"
    assert cfg.attention.threshold == 0.4 and cfg.saliency.threshold == 0.5
    assert cfg.deeplab.backbone == "resnet101" and cfg.deeplab.crop_size == 321
    assert len(cfg.class_names) == 20


def test_voc_without_duts_names_both_saliency_options(tmp_path):
    cfg = build_config("voc", [f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError) as info:
        validate(cfg, ["train_saliency"])
    assert "saliency.train_root" in str(info.value) and "saliency.checkpoint" in str(info.value)


def test_overrides_are_typed():
    cfg = build_config("demo", ["classifier.steps=7", "attention.scales=1.0, 0.5,1.5",
                                "attention.flip=true", "runtime.device=cpu",
                                "class_names=a,b", "guide.crf_iterations=3"])
    assert cfg.classifier.steps == 7 and isinstance(cfg.classifier.steps, int)
    assert cfg.attention.scales == [1.0, 0.5, 1.5]
    assert cfg.attention.flip is True
    assert cfg.class_names == ["a", "b"]
    assert cfg.guide.crf_iterations == 3 and cfg.runtime.device == "cpu"


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
    ("deeplab.gt_percentage=120", r"deeplab.gt_percentage: 120.0 is outside \[0.0, 100.0\]"),
    ("classifier.backbone=vgg19", "classifier.backbone: 'vgg19' is not one of"),
    ("attention.threshold=1.5", r"attention.threshold: 1.5 is outside \[0, 1\]"),
    ("classifier.batch_size=0", "classifier.batch_size: must be positive"),
    ("runtime.device=gpu", "runtime.device: 'gpu'"),
    ("dataset.kind=voc", "dataset.root: .* is not a folder"),
    ("classifier.weights_path=/no/such/file.pth", "classifier.weights_path: /no/such/file.pth does not exist"),
    ("attention.scales=", "attention.scales: empty"),
    ("attention.scales=1.0,-0.5", "attention.scales: need one or more positive values"),
    ("runtime.seed=-1", "runtime.seed: -1 is outside"),
    ("classifier.lr=0", "classifier.lr: must be positive"),
    ("saliency.lr_encoder=-0.1", "saliency.lr_encoder: must be positive"),
    ("attention.seed_thresholds=", "attention.seed_thresholds: empty"),
    ("attention.seed_thresholds=0.2,1.5", r"attention.seed_thresholds: every value must be in \[0.0, 1.0\]"),
    ("runtime.precision=fp8", "runtime.precision: 'fp8' is not one of fp32, bf16, fp16"),
    ("dataset.on_bad_image=ignore", "dataset.on_bad_image: 'ignore' is not one of stop, skip"),
    ("runtime.experiment=a/b", "runtime.experiment: 'a/b' cannot name a folder"),
    ("deeplab.batch_size=1", "deeplab.batch_size: must be at least 2"),
    ("eval.overlays=-2", "eval.overlays: must be at least -1"),
    ("deeplab.segmentation_weights_path=/no/file.pth", "deeplab.segmentation_weights_path: /no/file.pth does not"),
    ("class_names=a,a", "class_names: names repeat"),
])
def test_validation_errors_name_the_setting(override, message):
    cfg = build_config("demo", [override])
    if override.startswith("dataset.kind"):
        cfg.dataset.root = "/no/such/folder"
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_cuda_without_a_gpu_is_refused_up_front():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="runtime.device: 'cuda' but this machine has no CUDA device"):
        validate(build_config("demo", ["runtime.device=cuda"]))


def test_every_declared_rule_is_read_by_validate():
    """Each declaration's rule bites: the default passes, a value breaking the rule is named."""
    for section in config_module.SECTIONS:
        for name, info in config_module.declared(type(getattr(build_config("demo"), section))).items():
            rules = info["rules"]
            bad = None
            if "choices" in rules:
                bad = "not-a-choice" if isinstance(rules["choices"][0], str) else -7
            elif rules.get("positive"):
                bad = 0
            elif "low" in rules:
                bad = rules["low"] - 1
            if bad is None:
                continue
            cfg = build_config("demo")
            kind = type(getattr(getattr(cfg, section), name))
            setattr(getattr(cfg, section), name, kind(bad) if kind in (int, float) else bad)
            with pytest.raises(ConfigError, match=f"{section}.{name}"):
                validate(cfg)


def test_saved_config_loads_back_with_overrides(tmp_path):
    cfg = build_config("demo", ["classifier.steps=7", "attention.scales=1.0,0.5", "class_names=a,b"])
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    loaded = config_module.load_config(path, ["deeplab.steps=9"])
    assert loaded.classifier.steps == 7 and loaded.attention.scales == [1.0, 0.5]
    assert loaded.class_names == ["a", "b"] and loaded.deeplab.steps == 9
    loaded.deeplab.steps = cfg.deeplab.steps
    assert loaded.to_dict() == cfg.to_dict()
    path.write_text(json.dumps({"classifier": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="classifier.stepz: unknown setting"):
        config_module.load_config(path)


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
    defaults = build_config("demo")
    for section in config_module.SECTIONS:  # every setting, with its meaning
        for name, info in config_module.declared(type(getattr(defaults, section))).items():
            assert f"{section}.{name}" in out
            assert info["help"], f"{section}.{name} has no help text"


def test_non_finite_numbers_are_refused():
    with pytest.raises(ConfigError, match="classifier.lr: nan is not a finite number"):
        validate(build_config("demo", ["classifier.lr=nan"]))


def test_a_ready_saliency_network_needs_no_saliency_training_data(tmp_path):
    checkpoint = tmp_path / "picanet.ckpt"
    checkpoint.write_bytes(b"x")
    cfg = build_config("voc", [f"dataset.root={tmp_path}", f"saliency.checkpoint={checkpoint}"])
    validate(cfg, ["train_saliency", "create_saliency"])  # data/DUTS is absent, and not needed
