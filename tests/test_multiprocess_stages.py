"""The per-image stages under torchrun (2 processes, gloo on the CPU) write exactly what one
process writes: every tmp/ file byte for byte, and the same reports."""

from __future__ import annotations

import os

import pytest
import stage_runs
import torch.distributed as dist

from common import work


def test_fixed_batches_do_not_depend_on_what_is_left_to_do():
    sizes = {"a": (2, 3), "b": (4, 4), "c": (2, 3), "d": (2, 3), "e": (4, 4)}
    batches = work.fixed_batches(list(sizes), 2, group=sizes.get)
    assert batches == [["a", "c"], ["d"], ["b", "e"]]  # one size per batch, groups in sorted order
    assert work.fixed_batches(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(ValueError, match="batch size 0"):
        work.fixed_batches(["a"], 0)


def test_each_process_takes_whole_batches_that_are_not_done(monkeypatch):
    batches = [["a", "b"], ["c", "d"], ["e", "f"], ["g"]]
    done = {"a", "b", "c", "g"}.__contains__
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    # batch ["c", "d"] is recomputed whole (d is missing), beside the neighbour it had before
    assert work.my_batches(batches, done, overwrite=False) == [["e", "f"]]
    monkeypatch.setenv("RANK", "1")
    assert work.my_batches(batches, done, overwrite=False) == [["c", "d"]]
    assert work.my_batches(batches, done, overwrite=True) == [["c", "d"], ["g"]]


@pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")
def test_two_processes_write_what_one_process_writes(tmp_path_factory, tmp_path):
    data_root, single = stage_runs.reference(tmp_path_factory)
    result = stage_runs.run_main(tmp_path, data_root, stage_runs.PER_IMAGE_STAGES, processes=2)
    stage_runs.check(result)
    expected = stage_runs.comparable(single / "tmp")
    actual = stage_runs.comparable(tmp_path / "tmp")
    assert len(expected) > 100  # maps, CAMs, masks, labels, predictions, overlays, previews
    assert stage_runs.differing(expected, actual) == []
    for stage in stage_runs.PER_IMAGE_STAGES:
        assert stage_runs.reports(tmp_path / "runs", stage) == stage_runs.reports(single / "runs", stage)
    assert stage_runs.reports(tmp_path / "runs", "eval_deeplab")["report.json"]["images_scored"] == 8
    # one manifest of reusable predictions, no per-process leftovers
    assert not list((tmp_path / "runs" / "eval_deeplab").glob("predictions.rank*.json"))
    assert (tmp_path / "runs" / "eval_deeplab" / "predictions.json").read_bytes() == (
        single / "runs" / "eval_deeplab" / "predictions.json"
    ).read_bytes()


# imported by Python at start-up (sitecustomize on PYTHONPATH): the record check of process 0 fails
# as a stale training would, before the stage's first barrier
FAIL_ON_RANK_0 = """
import os
if os.environ.get("RANK") == "0":
    from common import provenance

    def begin(cfg, stage):
        raise provenance.StaleOutputs(f"{stage}: made from other settings (injected)")

    provenance.begin = begin
"""


@pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")
def test_an_error_on_process_0_before_a_stage_stops_every_process(tmp_path_factory, tmp_path):
    data_root, _ = stage_runs.reference(tmp_path_factory)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_ON_RANK_0)
    env = stage_runs.environment()
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
    result = stage_runs.run_main(tmp_path, data_root, ["create_saliency"], processes=2, env=env, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "error (create_saliency): create_saliency: made from other settings (injected)" in output
    assert "process 0 stopped before this stage: create_saliency: made from other settings (injected)" in output
    assert not (tmp_path / "tmp" / "saliency").exists() or not any((tmp_path / "tmp" / "saliency").rglob("*.png"))
