"""Shared by test_multiprocess_stages.py and test_crash_resume.py: a tiny synthetic set with
random-weight networks (no training), ``main.py`` run in subprocesses, and output comparisons.

The four per-image stages (CREATE_SALIENCY, CREATE_ATTENTION, CREATE_GUIDE, EVAL_DEEPLAB) only read
networks from checkpoints/, so random weights saved in the trainings' format exercise them fully
in seconds. Every subprocess runs single-threaded (OMP_NUM_THREADS=1), so runs compare bitwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PER_IMAGE_STAGES = ("create_saliency", "create_attention", "create_guide", "eval_deeplab")
STAGE_FOLDER = {
    "create_saliency": "saliency",
    "create_attention": "attention",
    "create_guide": "guide",
    "eval_deeplab": "deeplab",
}
# equal image sizes put several images in a batch (CREATE_ATTENTION and EVAL_DEEPLAB batch only
# images of one size), so batches, and which process runs them, matter
DATA = {
    "synthetic.num_train": 12,
    "synthetic.num_val": 8,
    "synthetic.min_size": 64,
    "synthetic.max_size": 64,
    "synthetic.saliency_num_train": 2,
    "synthetic.saliency_num_val": 2,
}
SETTINGS = {
    **DATA,
    "runtime.device": "cpu",
    "runtime.num_workers": 0,
    "saliency.input_size": 64,
    "saliency.batch_size": 3,
    "attention.batch_size": 3,
    "attention.splits": "train,val",
    "guide.workers": 2,
    "guide.previews": 2,
    "eval.batch_size": 3,
    "eval.overlays": 4,
}


def overrides(root: Path, data_root: Path, settings: dict[str, object] | None = None) -> list[str]:
    """``--set`` arguments putting tmp/, runs/ and checkpoints/ under ``root`` (checkpoints are
    shared: ``data_root/checkpoints``), on the synthetic set in ``data_root/synthetic``; then
    ``settings``, over the shared ones."""
    values = {
        **SETTINGS,
        "paths.tmp": root / "tmp",
        "paths.runs": root / "runs",
        "paths.checkpoints": data_root / "checkpoints",
        "paths.data_root": data_root,
        "dataset.root": data_root / "synthetic",
        **(settings or {}),
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def make_config(root: Path, data_root: Path):
    import config as config_module

    args = overrides(root, data_root)
    return config_module.build_config("demo", [args[i + 1] for i in range(0, len(args), 2)])


def prepare(data_root: Path) -> None:
    """Generate the tiny set and save random-weight PiCANet, classifier and DeepLab checkpoints."""
    import torch

    import datasets
    from classifier.models import build_classifier
    from common.checkpoint import save_training_state
    from common.layout import Layout
    from deeplab.models import build_deeplab
    from saliency.picanet import PiCANet

    cfg = make_config(data_root / "unused", data_root)
    image_set = datasets.build(cfg, "train")  # generates the set
    layout = Layout(cfg)
    torch.manual_seed(0)
    saliency = PiCANet(encoder="efficientnet_lite0")
    save_training_state(
        layout.checkpoint("saliency", "best"),
        model=saliency,
        extra={"encoder": "efficientnet_lite0", "paper_attention": False},
    )
    classifier = build_classifier(
        backbone="efficientnet_lite0", num_classes=image_set.num_classes, pretrained=False, output_stride=16
    )
    save_training_state(
        layout.checkpoint("classifier", "best"),
        model=classifier,
        extra={**classifier.describe(), "class_names": image_set.class_names},
    )
    deeplab = build_deeplab(
        backbone="efficientnet_lite0", num_classes=image_set.num_classes + 1, pretrained_backbone=False
    )
    save_training_state(
        layout.checkpoint("deeplab", "best"),
        model=deeplab,
        extra={
            **deeplab.describe(),
            "class_names": image_set.class_names,
            "gt_percentage": 0.0,
            "weakly_supervised": True,
            "not_weakly_supervised_because": [],
        },
    )


def environment(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(PROJECT),
        **extra,
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def run_main(
    root: Path,
    data_root: Path,
    stages,
    *,
    processes: int = 1,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    settings: dict[str, object] | None = None,
) -> subprocess.CompletedProcess:
    """``main.py --stages ...`` in a subprocess (torchrun with ``processes`` > 1; gloo on the CPU).

    ``prefix`` replaces ``python`` (e.g. a wrapper script that kills the run at some point);
    ``settings`` are set after (so over) the shared ones."""
    if processes > 1:
        launcher = [
            PYTHON,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={free_port()}",
        ]
    else:
        launcher = prefix or [PYTHON]
    command = [*launcher, str(PROJECT / "main.py"), "--stages", ",".join(stages), *overrides(root, data_root, settings)]
    return subprocess.run(command, cwd=root, env=env or environment(), capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def differing(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Paths missing on one side or whose bytes differ."""
    return sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))


def reports(runs: Path, stage: str) -> dict[str, object]:
    """The JSON reports of a stage (config.json and the eval manifest aside: they name folders)."""
    import json

    return {
        p.name: json.loads(p.read_text())
        for p in sorted((runs / stage).glob("*.json"))
        if p.name not in ("config.json", "predictions.json")
    }


def part_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.part"))


def copy_inputs(source: Path, target: Path, stage: str) -> None:
    """Give ``target`` the tmp/ folders written before ``stage`` in ``source`` (its inputs)."""
    earlier = PER_IMAGE_STAGES[: PER_IMAGE_STAGES.index(stage)]
    for name in earlier:
        if STAGE_FOLDER[name] in ("saliency", "attention"):
            shutil.copytree(source / "tmp" / STAGE_FOLDER[name], target / "tmp" / STAGE_FOLDER[name])


def assert_informative(tmp: Path) -> None:
    """Random weights still give outputs worth comparing: CAMs that are not all zero and pseudo
    labels with some class pixels (else a byte comparison would prove little)."""
    from PIL import Image

    cams = [np.load(p)["cams"] for p in (tmp / "attention" / "cams").glob("*.npz")]
    assert cams and sum(float(c.astype(np.float32).sum()) for c in cams) > 0
    labels = [np.array(Image.open(p)) for p in (tmp / "guide" / "labels").glob("*.png")]
    assert labels and any(((label > 0) & (label < 255)).any() for label in labels)


def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, run root) of one uninterrupted 1-process run of the four per-image stages, made
    once per test session (the test modules that use it share it through a marker file)."""
    base = tmp_path_factory.getbasetemp() / "per_image_reference"
    data_root, run_root = base / "data", base / "run"
    if not (base / "done").exists():
        shutil.rmtree(base, ignore_errors=True)
        run_root.mkdir(parents=True)
        prepare(data_root)
        check(run_main(run_root, data_root, PER_IMAGE_STAGES))
        assert_informative(run_root / "tmp")
        (base / "done").write_text("")
    return data_root, run_root


def comparable(folder: Path) -> dict[str, bytes]:
    """:func:`files_under` with each record.json's start and finish times left out."""
    import json

    found = files_under(folder)
    for name in [n for n in found if Path(n).name == "record.json"]:
        record = json.loads(found[name])
        found[name] = json.dumps(
            {k: v for k, v in record.items() if k not in ("started", "finished")}, sort_keys=True
        ).encode()
    return found
