"""Records of what made each stage's outputs: reuse when nothing changed, redo or refuse when it did;
missing inputs refused at preflight; experiments kept apart; hparams in tensorboard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import main
from common import files, provenance
from common.layout import Layout
from common.stages import BY_NAME, STAGES
from config import RENAMED


@pytest.fixture
def folder_cfg(make_cfg, tmp_path):
    """A two-image folder data set (nothing is trained: records are written by hand)."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for image_id in ("a", "b"):
        files.write_rgb(root / "images" / f"{image_id}.jpg", rng.integers(0, 255, (16, 20, 3)))
    (root / "labels.csv").write_text("id,names\na,cat\nb,dog\n")
    return make_cfg("folder", **{"dataset.root": str(root), "saliency.checkpoint": ""})


def _fake_network(cfg, folder: str, content: bytes = b"weights") -> None:
    path = Layout(cfg).checkpoint(folder, "best")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _run(cfg, name: str) -> dict:
    """What main.run_stages does around a stage, without the stage's work."""
    result = provenance.begin(cfg, name)
    provenance.finish(cfg, name)
    return result


def test_unchanged_inputs_keep_outputs_and_changed_ones_redo_the_stage(folder_cfg):
    cfg, layout = folder_cfg, Layout(folder_cfg)
    _fake_network(cfg, "saliency")
    assert _run(cfg, "create_saliency") == {"redone": []}
    kept = layout.saliency_prob("a")
    files.write_gray_png(kept, np.zeros((16, 20)))
    assert _run(cfg, "create_saliency") == {"redone": []} and kept.exists()

    cfg.saliency.input_size = 96  # changes every map
    assert _run(cfg, "create_saliency")["redone"] == ["saliency.input_size"]
    assert not kept.exists()
    record = json.loads(layout.record(BY_NAME["create_saliency"]).read_text())
    assert record["complete"] and record["inputs"]["settings"]["saliency.input_size"] == 96

    cfg.saliency.threshold = 0.3  # read where the maps are used (CREATE_GUIDE), not by this stage
    files.write_gray_png(kept, np.zeros((16, 20)))
    assert _run(cfg, "create_saliency") == {"redone": []} and kept.exists()


def test_changed_data_redoes_per_image_stages(folder_cfg):
    cfg, layout = folder_cfg, Layout(folder_cfg)
    _fake_network(cfg, "saliency")
    _run(cfg, "create_saliency")
    files.write_gray_png(layout.saliency_prob("a"), np.zeros((16, 20)))
    image = cfg.path(cfg.dataset.root) / "images" / "a.jpg"
    files.write_rgb(image, np.zeros((20, 16, 3)))  # the photo was replaced
    os.utime(image, ns=(1, 1))
    assert _run(cfg, "create_saliency")["redone"] == ["the data set's files or settings"]
    assert not layout.saliency_prob("a").exists()


def test_a_trained_network_is_never_silently_reused_or_discarded(folder_cfg, capsys):
    cfg = folder_cfg
    _run(cfg, "train_seed")
    _fake_network(cfg, "classifier")
    cfg.classifier.steps += 50  # training longer resumes: same inputs
    assert _run(cfg, "train_seed") == {"redone": []}
    cfg.classifier.lr = 0.5
    with pytest.raises(provenance.StaleOutputs, match=r"changed: classifier.lr\).*runtime.overwrite=true"):
        provenance.begin(cfg, "train_seed")
    assert Layout(cfg).checkpoint("classifier", "best").exists()
    cfg.runtime.overwrite = True
    assert _run(cfg, "train_seed")["redone"] == ["classifier.lr"]


def test_downstream_stages_follow_a_retrained_network(folder_cfg):
    cfg = folder_cfg
    _fake_network(cfg, "classifier", b"first")
    _run(cfg, "create_attention")
    assert _run(cfg, "create_attention") == {"redone": []}
    _fake_network(cfg, "classifier", b"second, trained longer")
    assert _run(cfg, "create_attention")["redone"] == ["outputs of train_seed"]
    _fake_network(cfg, "saliency")
    _run(cfg, "create_saliency")
    _run(cfg, "create_guide")
    cfg.attention.threshold = 0.6  # changes the attention masks, hence the pseudo labels
    assert _run(cfg, "create_attention")["redone"] == ["attention.threshold"]
    assert set(_run(cfg, "create_guide")["redone"]) == {"attention.threshold", "outputs of create_attention"}


def test_a_changed_crf_kernel_redoes_the_stages_that_use_it(folder_cfg):
    cfg, layout = folder_cfg, Layout(folder_cfg)
    for folder in ("saliency", "classifier", "deeplab"):
        _fake_network(cfg, folder)
    for name in ("create_saliency", "create_attention", "create_guide", "eval_deeplab"):
        _run(cfg, name)
    record = json.loads(layout.record(BY_NAME["create_guide"]).read_text())
    assert record["inputs"]["settings"]["guide.crf.bilateral_sxy"] == 80.0
    assert "guide.crf" not in record["inputs"]["settings"] and "guide.workers" not in record["inputs"]["settings"]
    assert _run(cfg, "create_guide") == {"redone": []}

    cfg.guide.crf.bilateral_sxy = 60.0
    assert _run(cfg, "create_guide")["redone"] == ["guide.crf.bilateral_sxy"]
    assert _run(cfg, "eval_deeplab") == {"redone": []}  # its CRF is eval.crf
    cfg.eval.crf.iterations = 5
    assert _run(cfg, "eval_deeplab")["redone"] == ["eval.crf.iterations"]
    cfg.eval.use_crf = not cfg.eval.use_crf
    assert _run(cfg, "eval_deeplab")["redone"] == ["eval.use_crf"]


def test_outputs_recorded_before_settings_were_renamed_are_kept(folder_cfg):
    """Records written when the CRF kernels were guide.crf_* / eval.crf_* (and eval.crf the switch):
    nothing is redone, and the training after CREATE_GUIDE does not become stale."""
    cfg, layout = folder_cfg, Layout(folder_cfg)
    cfg.eval.use_crf = False  # the default when eval.crf was the switch
    old_names = {new: old for old, new in RENAMED.items()}

    def write_as_before(name: str) -> None:
        path = layout.record(BY_NAME[name])
        record = json.loads(path.read_text())
        record["inputs"]["settings"] = {old_names.get(k, k): v for k, v in record["inputs"]["settings"].items()}
        path.write_text(json.dumps(record))

    for folder in ("saliency", "classifier"):
        _fake_network(cfg, folder)
    for name in ("create_saliency", "create_attention", "create_guide"):
        _run(cfg, name)
    write_as_before("create_guide")
    _run(cfg, "train_deeplab")  # trained on the labels of that record
    _fake_network(cfg, "deeplab")
    _run(cfg, "eval_deeplab")
    write_as_before("eval_deeplab")
    old = json.loads(layout.record(BY_NAME["eval_deeplab"]).read_text())["inputs"]["settings"]
    assert old["eval.crf"] is False and old["eval.crf_bilateral_sxy"] == 121.0 and "eval.use_crf" not in old
    kept = layout.pseudo_label("a")
    files.write_label_png(kept, np.zeros((16, 20), np.uint8))

    assert _run(cfg, "create_guide") == {"redone": []} and kept.exists()
    assert _run(cfg, "train_deeplab") == {"redone": []}
    assert _run(cfg, "eval_deeplab") == {"redone": []}
    provenance.check_inputs(cfg, ["eval_deeplab"])
    cfg.guide.crf.bilateral_sxy = 60.0  # a change is still one
    assert _run(cfg, "create_guide")["redone"] == ["guide.crf.bilateral_sxy"] and not kept.exists()


def test_outputs_recorded_before_a_setting_was_added_are_kept_at_its_old_behaviour(folder_cfg):
    """A record written before guide.uncertain_saliency existed: nothing is redone while the setting
    does what the code did then ([] = off); setting it is a change."""
    from config import ADDED

    cfg, layout = folder_cfg, Layout(folder_cfg)
    for folder in ("saliency", "classifier"):
        _fake_network(cfg, folder)
    for name in ("create_saliency", "create_attention", "create_guide"):
        _run(cfg, name)
    path = layout.record(BY_NAME["create_guide"])
    record = json.loads(path.read_text())
    for key in ADDED:
        record["inputs"]["settings"].pop(key, None)
    path.write_text(json.dumps(record))
    _run(cfg, "train_deeplab")
    _fake_network(cfg, "deeplab")
    kept = layout.pseudo_label("a")
    files.write_label_png(kept, np.zeros((16, 20), np.uint8))

    assert _run(cfg, "create_guide") == {"redone": []} and kept.exists()
    assert _run(cfg, "train_deeplab") == {"redone": []}
    provenance.check_inputs(cfg, ["train_deeplab"])
    cfg.guide.uncertain_saliency = [0.1, 0.5]
    assert _run(cfg, "create_guide")["redone"] == ["guide.uncertain_saliency"] and not kept.exists()


def test_a_deeplab_trained_before_frozen_stride_is_not_resumed_with_the_layers_frozen(folder_cfg):
    """The msrc preset now freezes the early layers (deeplab.frozen_stride 8): a DeepLab trained, or
    half-trained, before the setting existed trained every layer, so it must not be reused or
    resumed under the new recipe."""
    cfg, layout = folder_cfg, Layout(folder_cfg)
    cfg.deeplab.gt_percentage = 100  # no upstream stage to fake
    provenance.begin(cfg, "train_deeplab")  # interrupted: a record, not complete, and a network
    _fake_network(cfg, "deeplab")
    path = layout.record(BY_NAME["train_deeplab"])
    record = json.loads(path.read_text())
    record["inputs"]["settings"].pop("deeplab.frozen_stride")
    path.write_text(json.dumps(record))
    assert provenance.begin(cfg, "train_deeplab") == {"redone": []}  # read as 0, as it trained
    assert "deeplab.frozen_stride" not in json.loads(path.read_text())["inputs"]["settings"]  # kept as written
    cfg.deeplab.frozen_stride = 8
    with pytest.raises(provenance.StaleOutputs, match=r"changed: deeplab.frozen_stride\)"):
        provenance.begin(cfg, "train_deeplab")
    assert layout.checkpoint("deeplab", "best").exists()


def test_ignored_groups_and_keys_leave_the_record_alone(folder_cfg):
    import dataclasses

    stage = dataclasses.replace(BY_NAME["create_guide"], ignores=("guide.crf", "guide.workers"))
    settings = provenance.settings_of(folder_cfg, stage)
    assert not any(key.startswith("guide.crf.") for key in settings) and "guide.crf_margin" in settings
    assert "guide.workers" not in settings and "guide.rule" in settings


def test_missing_or_unfinished_inputs_are_refused_before_any_work(folder_cfg, monkeypatch, capsys):
    cfg = folder_cfg
    with pytest.raises(provenance.MissingInput, match="create_guide reads the outputs of create_saliency"):
        provenance.check_inputs(cfg, ["create_guide"])
    provenance.check_inputs(
        cfg, ["train_saliency", "create_saliency", "train_seed", "create_attention", "create_guide"]
    )  # each will be made first
    _fake_network(cfg, "saliency")
    provenance.begin(cfg, "create_saliency")  # started, never finished (killed)
    _fake_network(cfg, "classifier")
    _run(cfg, "create_attention")
    with pytest.raises(provenance.MissingInput, match="create_saliency did not finish"):
        provenance.check_inputs(cfg, ["create_guide"])

    monkeypatch.setattr(main.config_module, "build_config", lambda preset, overrides: cfg)
    assert main.main(["--stages", "create_guide", "--set", "guide.workers=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "create_saliency did not finish" in err
    assert "Traceback" not in err


def test_experiments_keep_their_outputs_apart(make_cfg, tmp_path):
    cfg = make_cfg("demo", **{"runtime.experiment": "lr_high", "paths.experiments": str(tmp_path / "exp")})
    layout = Layout(cfg)
    base = tmp_path / "exp" / "lr_high"
    assert (layout.tmp, layout.runs, layout.checkpoints) == (base / "tmp", base / "runs", base / "checkpoints")
    assert layout.record(BY_NAME["train_seed"]) == base / "checkpoints" / "classifier" / "record.json"
    assert layout.record(BY_NAME["create_guide"]) == base / "tmp" / "guide" / "record.json"


def test_hparams_hold_the_configuration_and_final_numbers(make_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from common import board

    cfg = make_cfg("demo")
    board.write_hparams(cfg, "train_seed", {"mAP": 0.75, "steps": 10, "AP": {"x": 1.0}, "seconds": 3.0})
    events = EventAccumulator(str(Layout(cfg).run_dir("train_seed")))
    events.Reload()
    assert events.Scalars("final/mAP")[0].value == pytest.approx(0.75)
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugin and "_hparams_/session_start_info" in plugin
    assert b"classifier.lr" in plugin["_hparams_/session_start_info"]
    assert b"guide.crf.bilateral_sxy" in plugin["_hparams_/session_start_info"]


def test_every_stage_declares_where_its_outputs_live():
    for stage in STAGES:
        assert (stage.tmp_folder is None) != (stage.checkpoint_folder is None), stage.name
        for key in stage.depends_on + stage.ignores:
            provenance._setting(__import__("config").build_config("demo"), key)  # every key exists


def test_a_problem_a_user_can_fix_inside_a_stage_is_one_line_naming_the_stage(folder_cfg, monkeypatch, capsys):
    from common.errors import InputError
    from saliency import make_saliency

    cfg = folder_cfg
    _fake_network(cfg, "saliency")

    def fails(cfg):
        raise InputError("/photos/masks/a.png is 40 x 50, its image 50 x 40")

    monkeypatch.setattr(make_saliency, "run", fails)
    monkeypatch.setattr(make_saliency, "preflight", lambda cfg, stages: None)
    monkeypatch.setattr(main.config_module, "build_config", lambda preset, overrides: cfg)
    assert main.main(["--stages", "create_saliency"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error (create_saliency): /photos/masks/a.png is 40 x 50, its image 50 x 40"
    with pytest.raises(InputError):  # --traceback shows where
        main.main(["--stages", "create_saliency", "--traceback"])


def test_a_stage_run_alone_refuses_upstream_outputs_made_from_other_settings(folder_cfg):
    cfg = folder_cfg
    _fake_network(cfg, "saliency")
    _run(cfg, "create_saliency")
    _fake_network(cfg, "classifier")
    _run(cfg, "create_attention")
    provenance.check_inputs(cfg, ["create_guide"])  # both finished from this configuration
    cfg.saliency.minmax_normalise = True  # CREATE_SALIENCY would now make other maps
    with pytest.raises(
        provenance.MissingInput,
        match=r"create_saliency's outputs were made from other inputs "
        r"than this configuration gives it \(changed: "
        r"saliency.minmax_normalise\)",
    ):
        provenance.check_inputs(cfg, ["create_guide"])
    provenance.check_inputs(cfg, ["create_saliency", "create_guide"])  # redone first: fine


def test_retraining_from_scratch_removes_the_old_network_first(folder_cfg):
    cfg = folder_cfg
    _run(cfg, "train_seed")
    _fake_network(cfg, "classifier")
    cfg.runtime.overwrite = True
    provenance.begin(cfg, "train_seed")  # the training that follows starts from nothing
    assert Layout(cfg).trained_network("classifier") is None
    cfg.runtime.overwrite = False
    with pytest.raises(provenance.MissingInput, match="train_seed has not trained a network yet"):
        provenance.check_inputs(cfg, ["create_attention"])


def test_records_survive_a_moved_or_recopied_data_set(folder_cfg, tmp_path):
    """The data digest holds paths relative to the data set's root and the files' bytes: a copy
    elsewhere, even with new modification times, compares equal; a changed byte does not."""
    import shutil

    root = Path(folder_cfg.dataset.root)
    copy = tmp_path / "moved" / "photos"
    shutil.copytree(root, copy)
    for path in copy.rglob("*"):
        os.utime(path, ns=(2_000_000_000, 2_000_000_000))  # provisioned again: other times
    assert provenance.tree_digest(root) == provenance.tree_digest(copy)
    image = copy / "images" / "a.jpg"
    data = bytearray(image.read_bytes())
    data[-3] ^= 1
    image.write_bytes(bytes(data))
    assert provenance.tree_digest(root) != provenance.tree_digest(copy)


def test_a_recopied_data_set_keeps_trained_networks_and_outputs(folder_cfg):
    cfg, layout = folder_cfg, Layout(folder_cfg)
    _fake_network(cfg, "saliency")
    _run(cfg, "create_saliency")
    kept = layout.saliency_prob("a")
    files.write_gray_png(kept, np.zeros((16, 20)))
    for path in cfg.path(cfg.dataset.root).rglob("*"):
        os.utime(path, ns=(3_000_000_000, 3_000_000_000))
    assert _run(cfg, "create_saliency") == {"redone": []} and kept.exists()
    _run(cfg, "train_seed")
    _fake_network(cfg, "classifier")
    for path in cfg.path(cfg.dataset.root).rglob("*"):
        os.utime(path, ns=(4_000_000_000, 4_000_000_000))
    assert _run(cfg, "train_seed") == {"redone": []}  # no StaleOutputs: same bytes


def test_file_contents_are_read_again_only_when_size_or_time_changed(folder_cfg, monkeypatch):
    cfg = folder_cfg
    root, cache = cfg.path(cfg.dataset.root), Layout(cfg).data_digests()
    first = provenance.tree_digest(root, cache)
    read: list[str] = []
    monkeypatch.setattr(provenance, "file_digest", lambda path: read.append(path.name) or "x")
    assert provenance.tree_digest(root, cache) == first and read == []
    os.utime(root / "images" / "b.jpg", ns=(5_000_000_000, 5_000_000_000))
    provenance.tree_digest(root, cache)
    assert read == ["b.jpg"]


def test_records_with_the_older_digest_of_times_are_kept_while_the_times_hold(folder_cfg):
    """Records written before the digest read the files' bytes hold one of paths, sizes and
    times: still the data while those are unchanged, so an update of the code retrains nothing."""
    cfg, layout = folder_cfg, Layout(folder_cfg)
    _fake_network(cfg, "saliency")
    _run(cfg, "create_saliency")
    _run(cfg, "train_seed")
    _fake_network(cfg, "classifier")
    for name in ("create_saliency", "train_seed"):
        path = layout.record(BY_NAME[name])
        record = json.loads(path.read_text())
        record["inputs"]["data"] = provenance.data_digest(cfg, BY_NAME[name].data, by_times=True)
        path.write_text(json.dumps(record))
    kept = layout.saliency_prob("a")
    files.write_gray_png(kept, np.zeros((16, 20)))
    assert _run(cfg, "create_saliency") == {"redone": []} and kept.exists()
    assert _run(cfg, "train_seed") == {"redone": []}
    provenance.check_inputs(cfg, ["create_attention"])
    os.utime(cfg.path(cfg.dataset.root) / "images" / "a.jpg", ns=(1, 1))  # the older form cannot tell
    assert _run(cfg, "create_saliency")["redone"] == ["the data set's files or settings"]
