"""Every stage in one tiny run through main.py: each reads what the one before wrote to tmp/."""

from __future__ import annotations

import json

import numpy as np

import datasets
import main
from common import files
from common.layout import Layout
from common.stages import STAGES

TINY_ALL = {
    "saliency.steps": 4,
    "saliency.val_every": 2,
    "saliency.train_batch_size": 4,
    "saliency.input_size": 64,
    "saliency.batch_size": 8,
    "classifier.steps": 6,
    "classifier.val_every": 3,
    "classifier.batch_size": 4,
    "classifier.crop_size": 64,
    "attention.batch_size": 4,
    "guide.workers": 1,
    "guide.previews": 2,
    "deeplab.steps": 4,
    "deeplab.val_every": 2,
    "deeplab.batch_size": 2,
    "deeplab.crop_size": 64,
}


def test_main_runs_every_stage_and_reports_each_score(tiny_cfg, monkeypatch, capsys):
    cfg = tiny_cfg(**TINY_ALL)
    monkeypatch.setattr(main.config_module, "build_config", lambda preset, overrides: cfg)
    assert main.main([]) == 0  # the flags at the top of main.py: every stage on

    layout = Layout(cfg)
    train_set = datasets.build(cfg, "train")
    val_set = datasets.build(cfg, "val")
    for image_id in train_set.ids:
        label = files.read_label_png(layout.pseudo_label(image_id))
        assert label.shape == train_set.image_size(image_id)
        allowed = set(range(train_set.num_classes + 1)) | {255}
        assert set(np.unique(label).tolist()) <= allowed
    for image_id in val_set.ids:
        assert files.read_label_png(layout.prediction(image_id)).shape == val_set.image_size(image_id)

    summaries = json.loads((layout.runs / "summary.json").read_text())
    assert [name for name in summaries if name != "data_check"] == main.STAGE_NAMES
    table = (layout.runs / "summary.md").read_text()
    rows = [(stage.name, key, label) for stage in STAGES for key, label in stage.table]
    assert len(rows) == 7
    for _, _key, label in rows:
        assert label in table, f"{label} missing from the closing table"
    assert table in capsys.readouterr().out
    for stage, key, _ in rows:
        assert 0.0 <= summaries[stage][key] <= 1.0 or key == "MAE"
    for stage in STAGES:  # every stage left a complete record of what made its outputs
        assert json.loads(layout.record(stage).read_text())["complete"] is True
