"""Shared fixtures: an isolated project tree per test, and small configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
SHARED = PROJECT.parent / "shared"

import config as config_module  # noqa: E402


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(preset="demo", **{"section.key": value})`` (or ``section.group.key``, or ``__`` for
    the dots): a validated config whose tmp, runs, checkpoints and data live under the test's own folder."""

    def build(preset: str = "demo", **overrides):
        cfg = config_module.build_config(preset)
        cfg.paths.tmp = str(tmp_path / "tmp")
        cfg.paths.runs = str(tmp_path / "runs")
        cfg.paths.checkpoints = str(tmp_path / "checkpoints")
        cfg.paths.data_root = str(tmp_path / "data")
        if cfg.dataset.kind == "synthetic":
            cfg.dataset.root = str(tmp_path / "data" / "synthetic")
        for key, value in overrides.items():
            config_module.set_setting(cfg, key.replace("__", "."), value)
        return config_module.validate(cfg)

    return build


def needs_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


TINY_SYNTHETIC = {
    "synthetic.num_train": 48,
    "synthetic.num_val": 16,
    "synthetic.saliency_num_train": 24,
    "synthetic.saliency_num_val": 8,
}


@pytest.fixture(scope="session")
def tiny_synthetic_root(tmp_path_factory):
    """A small synthetic set generated once per test session (its root folder)."""
    from datasets import synthetic

    root = tmp_path_factory.mktemp("synthetic")
    cfg = config_module.build_config("demo")
    cfg.dataset.root = str(root)
    for key, value in TINY_SYNTHETIC.items():
        setattr(cfg.synthetic, key.split(".")[1], value)
    synthetic.ensure_generated(cfg)
    return root


@pytest.fixture
def tiny_cfg(make_cfg, tiny_synthetic_root):
    """``tiny_cfg(**overrides)``: the demo config on the session's small synthetic set, with
    CPU-sized steps; tmp/runs/checkpoints in the test's own folder."""

    def build(**overrides):
        settings = {**TINY_SYNTHETIC, "dataset.root": str(tiny_synthetic_root), "runtime.num_workers": 0, **overrides}
        return make_cfg("demo", **settings)

    return build
