"""Config building, overrides and validation errors."""

from __future__ import annotations

import json
import re

import pytest

import config as config_module
import main
from common.stages import NAMES
from config import ConfigError, build_config, validate

# what each preset changes that the others do not: (dataset.kind, dataset.root ends with, saliency.threshold)
PRESET_MARKS = {
    "demo": ("synthetic", "data/synthetic", 0.5),
    "voc": ("voc", "VOCdevkit/VOC2012", 0.5),
    "folder": ("folder", "data/my_images", 0.5),
    "msrc": ("voc", "data/msrc_objects", 0.1),
}


@pytest.mark.parametrize("preset", list(PRESET_MARKS))
def test_every_preset_builds_and_validates_once_its_data_exists(preset, tmp_path):
    assert set(PRESET_MARKS) == set(config_module.PRESETS)
    cfg = build_config(preset)
    assert cfg.preset == preset
    kind, root, threshold = PRESET_MARKS[preset]
    assert (cfg.dataset.kind, cfg.saliency.threshold) == (kind, threshold) and cfg.dataset.root.endswith(root)
    assert cfg.runtime.precision == "auto"  # every preset leaves the arithmetic to the hardware
    stages = list(NAMES)
    if kind != "synthetic":
        data = cfg.path(cfg.dataset.root)
        if not data.is_dir():  # the preset's data is not on this machine: refused, naming the folder
            with pytest.raises(ConfigError, match=f"dataset.root: {re.escape(str(data))} is not a folder"):
                validate(cfg)
        cfg.dataset.root = str(tmp_path)
    if preset in ("voc", "msrc"):
        duts = cfg.path(cfg.saliency.train_root)
        if not duts.is_dir():
            with pytest.raises(ConfigError, match=f"saliency.train_root: {re.escape(str(duts))} is not a folder"):
                validate(cfg, stages)
        cfg.saliency.train_root = str(tmp_path)
        cfg.saliency.val_root = ""
    validate(cfg)  # no stage: no saliency data needed yet
    if preset == "folder":  # real photos need a saliency network chosen: refused until one is
        with pytest.raises(ConfigError, match="saliency.checkpoint .* or saliency.train_root"):
            validate(cfg, stages)
        cfg.saliency.train_root = str(tmp_path)
    assert validate(cfg, stages) is cfg


def test_voc_preset_keeps_the_thesis_settings():
    cfg = build_config("voc")
    assert cfg.classifier.backbone == "vgg16_bn"
    assert cfg.attention.target_layer == "features.42"
    assert cfg.attention.threshold == 0.4 and cfg.saliency.threshold == 0.5
    assert cfg.deeplab.backbone == "resnet101" and cfg.deeplab.crop_size == 321
    assert len(cfg.class_names) == 20


def test_voc_without_duts_names_both_saliency_options(tmp_path):
    cfg = build_config("voc", [f"dataset.root={tmp_path}", "saliency.train_root="])
    assert cfg.dataset.root == str(tmp_path) and cfg.saliency.train_root == ""
    with pytest.raises(ConfigError) as info:
        validate(cfg, ["train_saliency"])
    assert "saliency.train_root" in str(info.value) and "saliency.checkpoint" in str(info.value)
    assert "dataset.root" not in str(info.value)


def test_overrides_are_typed():
    cfg = build_config(
        "demo",
        [
            "classifier.steps=7",
            "attention.scales=1.0, 0.5,1.5",
            "attention.flip=true",
            "runtime.device=cpu",
            "class_names=a,b",
            "guide.crf.iterations=3",
            "eval.crf.bilateral_sxy=60",
        ],
    )
    assert cfg.classifier.steps == 7 and isinstance(cfg.classifier.steps, int)
    assert cfg.attention.scales == [1.0, 0.5, 1.5]
    assert cfg.attention.flip is True
    assert cfg.class_names == ["a", "b"]
    assert cfg.guide.crf.iterations == 3 and cfg.runtime.device == "cpu"
    assert cfg.eval.crf.bilateral_sxy == 60.0 and isinstance(cfg.eval.crf.bilateral_sxy, float)
    # each section has its own group: the other one keeps its defaults
    assert cfg.eval.crf.iterations == 10 and cfg.guide.crf.bilateral_sxy == 80.0


def test_crf_groups_keep_each_sections_defaults():
    """The kernels CREATE_GUIDE and EVAL_DEEPLAB ran with before the group existed."""
    cfg = build_config("demo")
    kernels = ("gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat", "iterations")
    assert [getattr(cfg.guide.crf, k) for k in kernels] == [3.0, 3.0, 80.0, 13.0, 10.0, 10]
    assert [getattr(cfg.eval.crf, k) for k in kernels] == [3.0, 3.0, 121.0, 5.0, 4.0, 10]
    assert cfg.eval.use_crf is True and cfg.eval.crf_unary == "softmax" and cfg.eval.crf_confidence == 0.9
    assert cfg.guide.crf_margin == 16 and cfg.guide.crf_background_channel is False
    for preset in config_module.PRESETS:  # no preset changes them
        assert build_config(preset).guide.crf == cfg.guide.crf and build_config(preset).eval.crf == cfg.eval.crf


@pytest.mark.parametrize(
    "override, message",
    [
        ("guide.crf_bilateral_sxy=60", "guide.crf_bilateral_sxy is now guide.crf.bilateral_sxy"),
        ("guide.crf_iterations=3", "guide.crf_iterations is now guide.crf.iterations"),
        ("eval.crf_gaussian_compat=1", "eval.crf_gaussian_compat is now eval.crf.gaussian_compat"),
        ("eval.crf=true", r"eval.crf is now eval.use_crf \(eval.crf.\* now holds a group of settings: gaussian_sxy"),
        ("eval.crf.nope=1", "eval.crf.nope: unknown setting"),
        ("guide.crf=3", "guide.crf: a group of settings; set one of them: guide.crf.gaussian_sxy"),
        ("guide.rule.x=1", "guide.rule.x: guide.rule is a setting, not a group"),
        ("guide.crf.iterations=many", "guide.crf.iterations: cannot read 'many' as int"),
    ],
)
def test_renamed_and_misplaced_group_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("demo", [override])


def test_every_renamed_setting_names_one_that_exists():
    cfg = build_config("demo")
    for old, new in config_module.RENAMED.items():
        config_module.get_setting(cfg, new)
        config_module.set_setting(cfg, new, config_module.get_setting(cfg, new))
        with pytest.raises(ConfigError, match=f"{re.escape(old)} is now {re.escape(new)}"):
            config_module.set_setting(cfg, old, 1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("classifier.nope=1", "classifier.nope: unknown setting"),
        ("nosection.steps=1", "unknown section 'nosection'"),
        ("classifier.steps=ten", "classifier.steps: cannot read 'ten' as int"),
        ("attention.flip=maybe", "attention.flip: cannot read 'maybe' as bool"),
        ("classifier.steps", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_setting(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("demo", [override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset 'nope' is unknown"):
        build_config("nope")


@pytest.mark.parametrize(
    "override, message",
    [
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
        ("runtime.precision=fp8", "runtime.precision: 'fp8' is not one of auto, fp32, bf16, fp16"),
        ("dataset.on_bad_image=ignore", "dataset.on_bad_image: 'ignore' is not one of stop, skip"),
        ("runtime.experiment=a/b", "runtime.experiment: 'a/b' cannot name a folder"),
        ("deeplab.batch_size=1", "deeplab.batch_size: must be at least 2"),
        ("eval.overlays=-2", "eval.overlays: must be at least -1"),
        ("deeplab.segmentation_weights_path=/no/file.pth", "deeplab.segmentation_weights_path: /no/file.pth does not"),
        ("class_names=a,a", "class_names: names repeat"),
        ("guide.crf.bilateral_sxy=0", "guide.crf.bilateral_sxy: must be positive"),
        ("eval.crf.iterations=-1", "eval.crf.iterations: must not be negative"),
        ("eval.crf.bilateral_compat=-2", "eval.crf.bilateral_compat: must not be negative"),
    ],
)
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
    """Each declaration's rule bites: the default passes, a value breaking the rule is named (the
    settings of a group in every section that has it)."""
    checked = set()
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
            key = f"{section}.{name}"
            kind = type(config_module.get_setting(cfg, key))
            config_module.set_setting(cfg, key, kind(bad) if kind in (int, float) else bad)
            with pytest.raises(ConfigError, match=re.escape(key) + ":"):
                validate(cfg)
            checked.add(key)
    assert {"guide.crf.bilateral_sxy", "eval.crf.bilateral_sxy", "eval.crf.iterations"} <= checked


def test_saved_config_loads_back_with_overrides(tmp_path):
    cfg = build_config(
        "demo",
        [
            "classifier.steps=7",
            "attention.scales=1.0,0.5",
            "class_names=a,b",
            "guide.crf.bilateral_srgb=7",
            "eval.use_crf=true",
        ],
    )
    validate(cfg)  # as main.py saves it: runtime.precision resolved
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert json.loads(path.read_text())["guide"]["crf"]["bilateral_srgb"] == 7.0
    loaded = config_module.load_config(path, ["deeplab.steps=9", "eval.crf.iterations=4"])
    assert loaded.classifier.steps == 7 and loaded.attention.scales == [1.0, 0.5]
    assert loaded.class_names == ["a", "b"] and loaded.deeplab.steps == 9
    assert loaded.guide.crf.bilateral_srgb == 7.0 and loaded.eval.use_crf is True and loaded.eval.crf.iterations == 4
    assert isinstance(loaded.guide.crf, config_module.CrfConfig) and validate(loaded) is loaded
    loaded.eval.crf.iterations = cfg.eval.crf.iterations
    loaded.deeplab.steps = cfg.deeplab.steps
    assert loaded.to_dict() == cfg.to_dict()
    path.write_text(json.dumps({"classifier": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="classifier.stepz: unknown setting"):
        config_module.load_config(path)
    path.write_text(json.dumps({"guide": {"crf": {"iterations": 3, "nope": 1}}}))
    with pytest.raises(ConfigError, match="guide.crf.nope: unknown setting"):
        config_module.load_config(path)
    path.write_text(json.dumps({"guide": {"crf": 3}}))
    with pytest.raises(ConfigError, match="guide.crf: expected a group of settings"):
        config_module.load_config(path)


def test_a_config_saved_before_the_crf_groups_names_every_new_key(tmp_path):
    saved = build_config("demo").to_dict()
    for section in ("guide", "eval"):  # the flat keys runs/config.json held then
        for name, value in saved[section].pop("crf").items():
            saved[section][f"crf_{name}"] = value
    saved["eval"]["crf"] = saved["eval"].pop("use_crf")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    with pytest.raises(ConfigError) as info:
        config_module.load_config(path)
    message = str(info.value)
    assert "eval.crf is now eval.use_crf" in message
    for section in ("guide", "eval"):
        for name in ("gaussian_sxy", "bilateral_srgb", "iterations"):
            assert f"{section}.crf_{name} is now {section}.crf.{name}" in message
    assert "unknown" not in message


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
    cfg = build_config("demo")
    cfg.eval.crf.iterations = 2.5
    with pytest.raises(ConfigError, match="eval.crf.iterations: expected int"):
        validate(cfg)
    cfg.eval.crf = {"iterations": 2}  # a group replaced by something else
    with pytest.raises(ConfigError, match="eval.crf: expected a CrfConfig"):
        validate(cfg)


def test_paths_resolve_relative_to_project(tmp_path):
    cfg = build_config("demo")
    assert cfg.path("tmp") == config_module.PROJECT_ROOT / "tmp"
    assert cfg.path(str(tmp_path)) == tmp_path
    assert json.loads(cfg.to_json())["classifier"]["backbone"] == cfg.classifier.backbone


def test_main_rejects_bad_input_before_any_work(capsys, tmp_path, monkeypatch):
    validated = []
    real_validate = config_module.validate
    monkeypatch.setattr(
        config_module, "validate", lambda cfg, stages=(): validated.append(cfg) or real_validate(cfg, stages)
    )
    assert main.main(["--stages", "train_seed,fly", "--set", f"paths.runs={tmp_path}"]) == 2
    assert "unknown fly" in capsys.readouterr().err
    assert main.main(["--set", "classifier.steps=x"]) == 2
    assert "classifier.steps: cannot read 'x' as int" in capsys.readouterr().err
    assert main.main(["--set", "guide.crf_bilateral_sxy=60"]) == 2
    assert "guide.crf_bilateral_sxy is now guide.crf.bilateral_sxy" in capsys.readouterr().err
    assert not validated  # each refused before the configuration was complete
    assert (
        main.main(["--stages", "train_seed", "--set", f"paths.runs={tmp_path}", "--set", "guide.crf.bilateral_sxy=0"])
        == 2
    )
    assert "guide.crf.bilateral_sxy: must be positive" in capsys.readouterr().err
    assert [cfg.paths.runs for cfg in validated] == [str(tmp_path)]
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
    # a group's settings with each section's own default
    assert re.search(r"guide\.crf\.bilateral_sxy +80\.0 +appearance kernel width", out)
    assert re.search(r"eval\.crf\.bilateral_sxy +121\.0 +appearance kernel width", out)
    assert "guide.crf_bilateral_sxy" not in out


def test_non_finite_numbers_are_refused():
    with pytest.raises(ConfigError, match="classifier.lr: nan is not a finite number"):
        validate(build_config("demo", ["classifier.lr=nan"]))


def test_a_ready_saliency_network_needs_no_saliency_training_data(tmp_path):
    checkpoint = tmp_path / "picanet.ckpt"
    checkpoint.write_bytes(b"x")
    cfg = build_config("voc", [f"dataset.root={tmp_path}", f"saliency.checkpoint={checkpoint}"])
    assert cfg.saliency.checkpoint == str(checkpoint) and cfg.dataset.root == str(tmp_path)
    validate(cfg, ["train_saliency", "create_saliency"])  # data/DUTS is absent, and not needed


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu avx2 avx512f avx512_bf16 sse", True),
        ("fpu amx_bf16 amx_tile", True),
        ("fpu avx2 avx512f avx512bw avx512vl", False),
        ("", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert config_module.cpu_has_native_bf16(f"processor : 0\nflags\t\t: {flags}\n") is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_resolved_once_at_validation(native, monkeypatch):
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: native)
    cfg = validate(build_config("demo", ["runtime.device=cpu"]))
    assert cfg.runtime.precision == ("bf16" if native else "fp32")
    assert json.loads(cfg.to_json())["runtime"]["precision"] == cfg.runtime.precision
    # a chosen precision is kept whatever the hardware
    assert validate(build_config("demo", ["runtime.device=cpu", "runtime.precision=fp32"])).runtime.precision == "fp32"


def test_frozen_stride_needs_pretrained_weights_to_keep(tmp_path):
    validate(build_config("demo", ["deeplab.frozen_stride=8"]))
    with pytest.raises(ConfigError, match="deeplab.frozen_stride 8 .* deeplab.pretrained_backbone is off"):
        validate(build_config("demo", ["deeplab.frozen_stride=8", "deeplab.pretrained_backbone=false"]))
    # a trained DeepLab to start from gives the early layers weights worth keeping, ImageNet's or not
    start = tmp_path / "start.pt"
    start.write_bytes(b"checked by TRAIN_DEEPLAB")
    overrides = ["deeplab.frozen_stride=8", "deeplab.pretrained_backbone=false", f"deeplab.init_checkpoint={start}"]
    validate(build_config("demo", overrides))
    with pytest.raises(ConfigError, match="deeplab.frozen_stride"):
        validate(build_config("demo", ["deeplab.frozen_stride=16"]))  # 4 or 8 (or 0)


def test_msrc_preset_freezes_early_layers_and_says_so_when_weights_are_off(tmp_path):
    def msrc(*overrides):
        cfg = build_config("msrc", list(overrides))
        cfg.dataset.root = cfg.saliency.train_root = str(tmp_path)  # the preset's data need not be here
        cfg.saliency.val_root = cfg.saliency.second_val_root = ""
        return cfg

    assert validate(msrc()).deeplab.frozen_stride == 8  # chosen on MSRC val (docs/RESULTS.md)
    assert validate(msrc()).deeplab.average_decay == 0.995
    assert validate(build_config("demo")).deeplab.average_decay == 0.0  # the original's trained weights
    with pytest.raises(ConfigError, match="deeplab.average_decay"):
        validate(msrc("deeplab.average_decay=1"))
    # a user who turns the ImageNet weights off is told which setting also has to change
    with pytest.raises(ConfigError, match=r"deeplab.frozen_stride 8 .* \(set frozen_stride 0\)"):
        validate(msrc("deeplab.pretrained_backbone=false"))
    validate(msrc("deeplab.pretrained_backbone=false", "deeplab.frozen_stride=0"))
