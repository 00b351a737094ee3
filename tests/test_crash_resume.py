"""A per-image stage killed (SIGKILL) half-way, then run again, ends with exactly the outputs of an
uninterrupted run, no leftover ``.part`` file, and no process of the killed run still alive."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import stage_runs

from common import files

# The wrapper counts atomic writes in the stage's own process and, at the N-th, writes half a file
# and kills itself with SIGKILL: a deterministic "kill at any point", with a .part left behind.
KILLER = """
import os, runpy, signal, sys
sys.path.insert(0, {project!r})
from common import files
limit, count = int(os.environ["KILL_AT_WRITE"]), 0
atomic_write = files.atomic_write

def killing_write(path, write):
    global count
    if os.path.basename(path) == "data_digests.json":  # the data digest's cache, not a stage output
        return atomic_write(path, write)
    count += 1
    if count < limit:
        return atomic_write(path, write)
    def half(handle):
        handle.write(b"half a file")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return atomic_write(path, half)

files.atomic_write = killing_write
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# the write at which each stage is killed: part-way through its images
KILL_AT = {"create_saliency": 7, "create_attention": 9, "create_guide": 5, "eval_deeplab": 4}
# EVAL_DEEPLAB with its CRF pool (the guide's pool is on in every run: guide.workers 2)
SETTINGS = {"eval_deeplab": {"runtime.num_workers": 2}}


def test_stale_part_files_are_removed_and_live_ones_kept(tmp_path):
    stale = tmp_path / "labels" / ".a.png.x1y2.part"
    stale.parent.mkdir()
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    fresh = tmp_path / ".b.png.z3.part"  # being written by a live process right now
    fresh.write_bytes(b"")
    kept = [tmp_path / "a.png", tmp_path / "notes.part"]  # a finished file; not atomic_write's name
    for path in kept:
        path.write_bytes(b"x")
    removed = files.remove_stale_parts(tmp_path, older_than=time.time() - 1)
    assert removed == [stale] and not stale.exists()
    assert fresh.exists() and all(path.exists() for path in kept)
    assert files.remove_stale_parts(tmp_path / "absent") == []


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (the killed run's descendants)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    status = (entry / "status").read_text()
                    if "\nState:\tZ" not in status:  # a zombie is already dead
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("stage", stage_runs.PER_IMAGE_STAGES)
def test_killed_stage_then_rerun_gives_the_uninterrupted_outputs(stage, tmp_path_factory, tmp_path):
    data_root, reference = stage_runs.reference(tmp_path_factory)
    stage_runs.copy_inputs(reference, tmp_path, stage)
    folder = stage_runs.STAGE_FOLDER[stage]
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(project=str(stage_runs.PROJECT)))
    marker = f"CRASH_TEST_{uuid.uuid4().hex}"
    env = stage_runs.environment(KILL_AT_WRITE=str(KILL_AT[stage]), **{marker: "1"})
    # a process that outlives the run keeps its output pipes open: the time-out ends the wait
    settings = SETTINGS.get(stage)
    killed = stage_runs.run_main(
        tmp_path, data_root, [stage], prefix=[stage_runs.PYTHON, str(killer)], env=env, timeout=240, settings=settings
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    outputs = tmp_path / "tmp" / folder
    written = [p for p in outputs.rglob("*") if p.is_file() and not p.name.endswith(".part")]
    expected = stage_runs.comparable(reference / "tmp" / folder)
    assert 0 < len(written) < len(expected)  # killed part-way
    assert stage_runs.part_files(tmp_path)  # the half-written file it was killed in
    # every process it started (loader workers, the guide's pool, its resource tracker) ends too
    deadline = time.time() + 20
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == []

    stage_runs.check(stage_runs.run_main(tmp_path, data_root, [stage], settings=settings))
    assert stage_runs.part_files(tmp_path) == []
    assert stage_runs.differing(expected, stage_runs.comparable(outputs)) == []
    assert stage_runs.reports(tmp_path / "runs", stage) == stage_runs.reports(reference / "runs", stage)
