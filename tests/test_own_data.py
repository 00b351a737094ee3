"""The path real users take: their own folder of tagged photos through every stage of main.py.

Nothing is ever written into the data set; a rerun with nothing changed redoes nothing; a change to
the data redoes the per-image stages and refuses to discard trained networks."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from test_pipeline_e2e import TINY_ALL as TINY_STAGES

import datasets
import main
from common import files
from datasets.voc import read_class_names

# the tiny stage settings of the every-stage test, with eval overlays and no loader processes
TINY_ALL = {**TINY_STAGES, "runtime.num_workers": 0, "eval.overlays": 2}


def make_folder_set(synthetic_root, root, count: int = 12) -> None:
    """A folder data set (images/, masks/, labels.csv, split lists) from the synthetic set's images."""
    names = read_class_names(synthetic_root)
    ids = (synthetic_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:count]
    rows = ["id,names"]
    (root / "images").mkdir(parents=True)
    for image_id in ids:
        shutil.copy(synthetic_root / "JPEGImages" / f"{image_id}.jpg", root / "images" / f"{image_id}.jpg")
        mask = files.read_label_png(synthetic_root / "SegmentationClass" / f"{image_id}.png")
        files.write_label_png(root / "masks" / f"{image_id}.png", mask)
        present = [names[v - 1] for v in np.unique(mask) if 1 <= v <= len(names)]
        rows.append(f"{image_id},{' '.join(present)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text("\n".join(ids[: count * 2 // 3]) + "\n")
    (root / "val.txt").write_text("\n".join(ids[count * 2 // 3 :]) + "\n")
    (root / "class_names.txt").write_text("\n".join(names) + "\n")


def snapshot(root) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with the sha1 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def argv(tmp_path, root, saliency_root, stages=None, **extra):
    settings = {
        **TINY_ALL,
        "dataset.root": root,
        "paths.tmp": tmp_path / "tmp",
        "paths.runs": tmp_path / "runs",
        "paths.checkpoints": tmp_path / "checkpoints",
        "saliency.train_root": saliency_root / "train",
        "saliency.val_root": saliency_root / "val",
        **extra,
    }
    args = ["--preset", "folder"] + [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]
    return args + (["--stages", stages] if stages else [])


def test_own_photos_through_every_stage_leave_the_folder_untouched(tiny_synthetic_root, tmp_path, capsys):
    root = tmp_path / "my_photos"
    make_folder_set(tiny_synthetic_root, root)
    before = snapshot(root)
    saliency_root = tiny_synthetic_root / "saliency"
    assert main.main(argv(tmp_path, root, saliency_root)) == 0
    assert snapshot(root) == before  # byte-identical, no file added
    layout_runs = tmp_path / "runs"
    summary = json.loads((layout_runs / "summary.json").read_text())
    assert summary["eval_deeplab"]["mIoU"] >= 0.0
    capsys.readouterr()

    # a rerun with nothing changed redoes nothing
    assert main.main(argv(tmp_path, root, saliency_root)) == 0
    out = capsys.readouterr().out
    assert "redoing" not in out
    assert snapshot(root) == before

    # one photo replaced: the per-image stages would be stale, and the classifier was trained on the
    # old data, so the run stops before discarding it, naming what changed
    image = next((root / "images").iterdir())
    files.write_rgb(image, np.zeros((40, 50, 3)))
    files.write_label_png(root / "masks" / f"{image.stem}.png", np.zeros((40, 50)))
    assert main.main(argv(tmp_path, root, saliency_root, stages="train_seed,create_attention")) == 2
    err = capsys.readouterr().err
    assert "the data set's files" in err and "runtime.overwrite=true" in err
    assert main.main(argv(tmp_path, root, saliency_root, stages="create_saliency")) == 0
    assert "create_saliency: its inputs changed" in capsys.readouterr().out


def test_real_photos_never_get_the_synthetic_saliency_set(tiny_synthetic_root, tmp_path, capsys):
    """The folder preset without saliency data is refused before any work, naming both options,
    and nothing is generated into the user's folder."""
    root = tmp_path / "my_photos"
    make_folder_set(tiny_synthetic_root, root, count=4)
    before = snapshot(root)
    args = [
        "--preset",
        "folder",
        "--set",
        f"dataset.root={root}",
        "--set",
        f"paths.runs={tmp_path / 'runs'}",
        "--set",
        f"paths.tmp={tmp_path / 'tmp'}",
        "--set",
        f"paths.checkpoints={tmp_path / 'ck'}",
    ]
    assert main.main(args) == 2
    err = capsys.readouterr().err
    assert "saliency.checkpoint" in err and "saliency.train_root" in err
    assert snapshot(root) == before
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tmp").exists()


def test_the_synthetic_generator_refuses_a_folder_it_did_not_write(tiny_synthetic_root, tmp_path):
    from datasets import synthetic

    root = tmp_path / "my_photos"
    make_folder_set(tiny_synthetic_root, root, count=2)
    before = snapshot(root)
    cfg = main.config_module.build_config("demo", [f"dataset.root={root}"])
    with pytest.raises(FileExistsError, match="already holds files the generator did not write"):
        synthetic.ensure_generated(cfg)
    cfg = main.config_module.build_config("folder", [f"dataset.root={root}"])
    with pytest.raises(ValueError, match="only for dataset.kind = synthetic"):
        synthetic.ensure_generated(cfg)
    assert snapshot(root) == before


def test_a_bad_photo_stops_the_run_before_any_work_or_is_skipped_and_listed(tiny_synthetic_root, tmp_path, capsys):
    root = tmp_path / "my_photos"
    make_folder_set(tiny_synthetic_root, root, count=6)
    broken = sorted((root / "images").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a download cut short
    saliency_root = tiny_synthetic_root / "saliency"
    assert main.main(argv(tmp_path, root, saliency_root, stages="train_seed")) == 2
    err = capsys.readouterr().err
    assert broken.name in err and "truncated" in err, err
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained

    overrides = argv(tmp_path, root, saliency_root, **{"dataset.on_bad_image": "skip"})[3::2]  # the k=v
    cfg = main.config_module.validate(main.config_module.build_config("folder", overrides))
    report = main.preflight(cfg, ["train_seed"])
    assert report == {"skipped_images": 1}
    listed = json.loads((tmp_path / "runs" / "data_check.json").read_text())
    assert broken.name in json.dumps(listed)
    assert broken.stem not in datasets.build(cfg, "train").ids
    assert "images skipped by the data check" in main.summary_table({}, report)
