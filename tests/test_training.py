"""The shared training loop (common/training.py) in the three trainings: resume after SIGKILL gives
the weights of an uninterrupted run, SIGTERM saves and exits, settings are checked before weights
load, a non-finite loss stops training and keeps the last good checkpoint, and two processes (gloo)
train like one on the same global batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common import training
from common.layout import Layout

PROJECT = Path(__file__).resolve().parents[1]

# Runs one training in a fresh process with one thread (bit-identical results need the same
# summation order). Hooks, from the environment: KILL_AT=n writes a marker file and sleeps once
# last.pt holds step n (the test then kills it); SIGTERM_AT=n sends itself SIGTERM during the
# n-th step of this run; NO_DROPOUT=1 turns dropout off (ranks draw their own masks, which one
# process cannot reproduce).
RUNNER = r"""
import importlib, json, os, signal, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, os.environ["PROJECT"])
import config
from common import checkpoint, distributed, runtime, training

module_name, overrides = sys.argv[1], json.loads(sys.argv[2])
cfg = config.validate(config.build_config("demo", overrides))
if os.environ.get("NO_DROPOUT"):
    torch.nn.Dropout.forward = lambda self, x: x
kill_at = int(os.environ.get("KILL_AT", 0))
if kill_at:
    save = checkpoint.save_training_state
    def save_then_wait(path, **kwargs):
        save(path, **kwargs)
        if path.name == "last.pt" and kwargs.get("step") == kill_at:
            (path.parent / "killable").write_text(str(kill_at))
            time.sleep(600)
    checkpoint.save_training_state = save_then_wait
sigterm_at = int(os.environ.get("SIGTERM_AT", 0))
if sigterm_at:
    fit = training.fit
    def fit_with_signal(cfg, spec, **kwargs):
        loss, calls = spec.loss, [0]
        def counted(network, batch, device):
            calls[0] += 1
            if calls[0] == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss(network, batch, device)
        spec.loss = counted
        return fit(cfg, spec, **kwargs)
    training.fit = fit_with_signal
runtime.seed_everything(cfg.runtime.seed)  # as main.run_stages does before each stage
importlib.import_module(module_name).run(cfg)
distributed.destroy_process_group()
"""

TRAININGS = {
    "classifier": (
        "classifier.train_classifier",
        "classifier",
        {"classifier.steps": 6, "classifier.val_every": 3, "classifier.batch_size": 4, "classifier.crop_size": 48},
    ),
    "saliency": (
        "saliency.train_saliency",
        "saliency",
        {
            "saliency.steps": 6,
            "saliency.val_every": 3,
            "saliency.train_batch_size": 2,
            "saliency.input_size": 64,
            "saliency.batch_size": 8,
        },
    ),
    "deeplab": (
        "deeplab.train_deeplab",
        "deeplab",
        {
            "deeplab.steps": 6,
            "deeplab.val_every": 3,
            "deeplab.batch_size": 2,
            "deeplab.crop_size": 48,
            "deeplab.gt_percentage": 100.0,
        },
    ),
}


@pytest.fixture
def runner(tmp_path, tiny_synthetic_root):
    """``runner(name, folder, env=..., **overrides) -> Popen`` starts training ``name`` with its tmp,
    runs and checkpoints under tmp_path/folder; ``wait`` it or kill it."""
    script = tmp_path / "run_training.py"
    script.write_text(RUNNER)

    def start(name: str, folder: str, *, env: dict | None = None, processes: int = 1, **overrides):
        module, _, settings = TRAININGS[name]
        base = tmp_path / folder
        values = {
            **settings,
            "dataset.root": str(tiny_synthetic_root),
            "synthetic.num_train": 48,
            "synthetic.num_val": 16,
            "synthetic.saliency_num_train": 24,
            "synthetic.saliency_num_val": 8,
            "paths.tmp": str(base / "tmp"),
            "paths.runs": str(base / "runs"),
            "paths.checkpoints": str(base / "checkpoints"),
            "runtime.num_workers": 0,
            "runtime.checkpoint_every": 2,
            "runtime.device": "cpu",
            # float32 whatever the CPU ("auto" picks bf16 where the CPU has it): the tests compare
            # bit for bit (resume) or within 1e-5 (two processes against one)
            "runtime.precision": "fp32",
            **overrides,
        }
        assignments = json.dumps([f"{key}={value}" for key, value in values.items()])
        environment = {
            **os.environ,
            "PROJECT": str(PROJECT),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        command = [sys.executable, str(script), module, assignments]
        if processes > 1:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                str(script),
                module,
                assignments,
            ]
        return subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )

    return start


def finished(process: subprocess.Popen, expected_rc: int = 0) -> str:
    """Wait for ``process``; its stdout and stderr. Fails with them when the exit code is unexpected."""
    out, err = process.communicate(timeout=600)
    assert process.returncode == expected_rc, f"exit {process.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return out + err


def last_state(base: Path, checkpoints: str) -> dict:
    return torch.load(base / "checkpoints" / checkpoints / "last.pt", map_location="cpu", weights_only=False)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for field, value in state.items():
            if torch.is_tensor(value):
                assert torch.equal(value, b["optimizer"]["state"][key][field]), (key, field)
    assert a["extra"]["best"] == b["extra"]["best"]


def kill_when_saved(process: subprocess.Popen, marker: Path) -> None:
    """SIGKILL ``process`` once its checkpoint_every save wrote ``marker`` (the runner then sleeps)."""
    deadline = time.time() + 600
    while not marker.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"training ended (exit {process.returncode}) before it could be killed\n{err[-3000:]}")
        assert time.time() < deadline, "no checkpoint_every save within 10 minutes"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("name", ["classifier", "saliency", "deeplab"])
def test_sigkill_then_rerun_gives_the_weights_of_an_uninterrupted_run(runner, tmp_path, name):
    _, checkpoints, _ = TRAININGS[name]
    finished(runner(name, "whole"))
    # the classifier's interrupted run loads its batches in a worker process: same batches
    workers = 1 if name == "classifier" else 0
    killed = runner(name, "killed", env={"KILL_AT": "4"}, **{"runtime.num_workers": workers})
    marker = tmp_path / "killed" / "checkpoints" / checkpoints / "killable"
    kill_when_saved(killed, marker)
    assert last_state(tmp_path / "killed", checkpoints)["step"] == 4  # saved between validations (3, 6)
    output = finished(runner(name, "killed", **{"runtime.num_workers": workers}))
    assert "resuming" in output and "at step 4" in output
    whole, resumed = last_state(tmp_path / "whole", checkpoints), last_state(tmp_path / "killed", checkpoints)
    assert resumed["step"] == 6
    assert_same_training_state(whole, resumed)
    if name == "classifier":  # SIGTERM: the step in progress finishes, is saved, and the process exits
        err = finished(runner(name, "stopped", env={"SIGTERM_AT": "3"}), expected_rc=128 + signal.SIGTERM)
        assert "SIGTERM received: saved step 3" in err
        assert last_state(tmp_path / "stopped", checkpoints)["step"] == 3
        finished(runner(name, "stopped"))
        assert_same_training_state(whole, last_state(tmp_path / "stopped", checkpoints))


def test_two_processes_train_like_one_on_the_same_global_batch(runner, tmp_path):
    settings = {"classifier.steps": 4, "classifier.val_every": 4, "classifier.batch_size": 4}
    env = {"NO_DROPOUT": "1"}
    finished(runner("classifier", "one", env=env, **settings))
    finished(runner("classifier", "two", env=env, processes=2, **settings))
    one, two = last_state(tmp_path / "one", "classifier"), last_state(tmp_path / "two", "classifier")
    assert one["step"] == two["step"] == 4
    assert len(two["extra"]["rng_ranks"]) == 2  # each rank's random state, for an exact resume
    largest = max((one["model"][k].float() - two["model"][k].float()).abs().max().item() for k in one["model"])
    assert largest <= 1e-5
    # rank 0 alone logs: one tensorboard event file, not one per process
    assert len(list((tmp_path / "two" / "runs" / "train_seed").glob("events.out.tfevents.*"))) == 1


# ---- in-process: the settings check and the non-finite stop ---------------------------------------


def test_changed_settings_are_named_before_any_weights_load(tiny_cfg):
    from classifier import train_classifier

    cfg = tiny_cfg(
        **{
            "classifier.steps": 2,
            "classifier.val_every": 2,
            "classifier.batch_size": 2,
            "classifier.crop_size": 32,
            "runtime.device": "cpu",
        }
    )
    train_classifier.run(cfg)
    path = Layout(cfg).checkpoint("classifier", "last")
    state = torch.load(path, weights_only=False)
    # a checkpoint trained on three classes: its head has another shape
    state["model"]["classifier.weight"] = state["model"]["classifier.weight"][:3].clone()
    state["model"]["classifier.bias"] = state["model"]["classifier.bias"][:3].clone()
    state["extra"].update(num_classes=3, class_names=state["extra"]["class_names"][:3])
    torch.save(state, path)
    cfg.classifier.steps = 4
    with pytest.raises(training.SettingsMismatch, match=r"num_classes: 3 there.*runtime.overwrite=true") as info:
        train_classifier.run(cfg)
    assert "size mismatch" not in str(info.value)
    cfg.runtime.overwrite = True
    assert train_classifier.run(cfg)["steps"] == 4


def test_saliency_compares_its_settings_on_resume(tiny_cfg):
    from saliency import train_saliency

    cfg = tiny_cfg(
        **{
            "saliency.steps": 1,
            "saliency.val_every": 1,
            "saliency.train_batch_size": 2,
            "saliency.input_size": 64,
            "runtime.device": "cpu",
        }
    )
    train_saliency.run(cfg)
    cfg.saliency.input_size = 96
    cfg.saliency.steps = 2
    with pytest.raises(training.SettingsMismatch, match=r"input_size: 64 there, 96 now.*runtime.overwrite=true"):
        train_saliency.run(cfg)


class _Numbers(torch.utils.data.Dataset):
    """x -> 2x; the sample at stream position ``poison`` is NaN."""

    def __init__(self, poison: int) -> None:
        self.poison = poison

    def __len__(self) -> int:
        return 8

    def __getitem__(self, item):
        index, position = training.split_item(item)
        value = float("nan") if position == self.poison else float(index)
        return torch.tensor([value]), torch.tensor([2.0 * index])


def _toy_spec(poison: int, width: int = 1) -> training.TrainingSpec:
    torch.manual_seed(0)
    model = torch.nn.Linear(1, width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def loss(network, batch, device):
        x, y = (t.to(device) for t in batch)
        return ((network(x)[:, :1] - y) ** 2).mean()

    return training.TrainingSpec(
        stage="toy",
        checkpoints="toy",
        model=model,
        optimizer=optimizer,
        scheduler=training.poly_schedule(optimizer, 10),
        steps=10,
        val_every=0,
        batch_size=2,
        samples=_Numbers(poison),
        loss=loss,
        metric="score",
        describe={"width": width},
        resume_keys=("width",),
        writer=training._NullWriter(),
    )


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(make_cfg):
    cfg = make_cfg(**{"runtime.checkpoint_every": 2})
    layout = Layout(cfg)
    spec = _toy_spec(poison=11)  # step 5 (positions 10, 11) holds the NaN
    with pytest.raises(
        training.TrainingError,
        match=r"toy: the loss is nan at step 6.*last good checkpoint "
        r".*last\.pt \(step 4\) is kept",
    ) as info:
        training.fit(cfg, spec, device=torch.device("cpu"))
    assert "\n" not in str(info.value)
    state = torch.load(layout.checkpoint("toy", "last"), weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(torch.isfinite(p).all() for p in spec.model.parameters())  # the NaN step never updated


def test_nonfinite_weights_under_a_finite_loss_are_never_saved(make_cfg):
    """sqrt(w - w) is 0, but its gradient is NaN: the update of step 4, a step whose checkpoint is
    due, poisons the weights."""
    cfg = make_cfg(**{"runtime.checkpoint_every": 2})
    layout = Layout(cfg)
    spec = _toy_spec(poison=-1)
    plain = spec.loss

    def loss(network, batch, device):
        value = plain(network, batch, device)
        if loss.calls == 3:  # step 4
            weight = network.weight
            value = value + torch.sqrt(weight - weight).sum()
        loss.calls += 1
        return value

    loss.calls = 0
    spec.loss = loss
    with pytest.raises(
        training.TrainingError,
        match=r"toy: the weights hold NaN or infinity after step 4 although its loss was finite; nothing "
        r"of that step was saved and the last good checkpoint .*last\.pt \(step 2\) is kept",
    ):
        training.fit(cfg, spec, device=torch.device("cpu"))
    state = torch.load(layout.checkpoint("toy", "last"), weights_only=False)
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert not torch.isfinite(spec.model.weight).all()  # what the check caught


def test_a_fresh_training_drops_the_events_of_the_one_before_and_a_resumed_one_keeps_them(make_cfg):
    """Tensorboard events describe one network: resuming adds to them, starting again from step 0
    (after the checkpoint was removed, or with runtime.overwrite) removes the old ones first, so
    curves and tensorboard never join two trainings into one."""
    cfg = make_cfg(**{"runtime.checkpoint_every": 2})
    run_dir = Layout(cfg).run_dir("toy")

    def fit(stop_after=None, overwrite=False):
        cfg.runtime.overwrite = overwrite
        spec = _toy_spec(poison=-1)
        spec.writer = None  # fit opens runs/toy/ itself
        training.fit(cfg, spec, device=torch.device("cpu"), stop_after=stop_after)
        return set(run_dir.glob("events.out.tfevents.*"))

    first = fit(stop_after=4)
    assert first
    resumed = fit()
    assert first < resumed  # the resumed run wrote a file of its own beside the first
    again = fit(overwrite=True)
    assert again and not again & resumed
    Layout(cfg).checkpoint("toy", "last").unlink()
    cfg.runtime.overwrite = False
    assert training.starts_fresh(cfg, "toy")
    fresh = fit()
    assert fresh and not fresh & again


def test_resuming_with_another_training_length_says_the_schedule_is_not_a_fresh_runs(make_cfg, capsys):
    """A longer ``steps`` extends a finished training (the length is not a resume setting), but
    the poly schedule restarts from mid-way: the user is told, with the way to a fresh run."""
    cfg = make_cfg()
    training.fit(cfg, _toy_spec(poison=-1), device=torch.device("cpu"))
    assert "warning" not in capsys.readouterr().err
    again = _toy_spec(poison=-1)
    outcome = training.fit(cfg, again, device=torch.device("cpu"))  # same length: nothing to say
    assert not outcome.trained and "warning" not in capsys.readouterr().err

    longer = _toy_spec(poison=-1)
    longer.steps = 15
    longer.scheduler = training.poly_schedule(longer.optimizer, 15)
    outcome = training.fit(cfg, longer, device=torch.device("cpu"))
    err = capsys.readouterr().err
    assert outcome.step == 15 and outcome.resumed_from == 10
    assert re.search(
        r"warning: toy: .*last\.pt was trained toward 10 steps and is at step 10; with 15 steps its "
        r"learning-rate schedule is stretched from step 10 to end at 15.*runtime\.overwrite=true",
        err,
    )
    state = torch.load(Layout(cfg).checkpoint("toy", "last"), weights_only=False)
    assert state["extra"][training.PLANNED_STEPS] == 15

    shorter = _toy_spec(poison=-1)
    shorter.steps = 12
    shorter.scheduler = training.poly_schedule(shorter.optimizer, 12)
    outcome = training.fit(cfg, shorter, device=torch.device("cpu"))
    assert not outcome.trained
    assert "trained toward 15 steps and is at step 15; with 12 steps it is kept as it is" in capsys.readouterr().err


def test_a_schedule_that_does_not_follow_the_length_resumes_longer_without_a_warning(make_cfg, capsys):
    """TRAIN_SALIENCY's step schedule is the same at any length: a longer run is what a fresh one
    of that length would be, so nothing is said (and no length is stored)."""
    cfg = make_cfg()
    spec = _toy_spec(poison=-1)
    spec.scheduler = training.step_schedule(spec.optimizer, 4)
    training.fit(cfg, spec, device=torch.device("cpu"))
    longer = _toy_spec(poison=-1)
    longer.steps, longer.scheduler = 15, training.step_schedule(longer.optimizer, 4)
    outcome = training.fit(cfg, longer, device=torch.device("cpu"))
    assert outcome.step == 15 and "warning" not in capsys.readouterr().err
    state = torch.load(Layout(cfg).checkpoint("toy", "last"), weights_only=False)
    assert training.PLANNED_STEPS not in state["extra"]


def _averaged_spec(decay: float) -> training.TrainingSpec:
    """The toy with a BatchNorm (statistics and a step counter to average and copy) and a weight
    average; validation at steps 5 and 10 scores the network it is given."""
    spec = _toy_spec(poison=-1)
    torch.manual_seed(0)
    spec.model = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.BatchNorm1d(2))
    spec.optimizer = torch.optim.SGD(spec.model.parameters(), lr=0.01, momentum=0.9)
    spec.scheduler = training.poly_schedule(spec.optimizer, 10)
    spec.average_decay, spec.val_every = decay, 5
    spec.validated = []
    spec.validate = lambda model, step, writer: spec.validated.append((step, model)) or {"score": -step}
    return spec


def test_the_weight_average_is_what_validation_scores_and_checkpoints_deliver(make_cfg):
    decay = 0.6
    cfg = make_cfg()
    spec = _averaged_spec(decay)
    expected = {k: v.clone() for k, v in spec.model.state_dict().items()}  # the average starts there
    trained = []

    def follow(optimizer, args, kwargs):  # the formula, step by step, on the trained weights
        weights = {k: v.clone() for k, v in spec.model.state_dict().items()}
        trained.append(weights)
        step = len(trained)
        keep = min(decay, (1 + step) / (10 + step))
        for name, value in weights.items():
            if value.is_floating_point():
                expected[name] = keep * expected[name] + (1 - keep) * value
            else:
                expected[name] = value

    spec.optimizer.register_step_post_hook(follow)
    training.fit(cfg, spec, device=torch.device("cpu"))
    state = torch.load(Layout(cfg).checkpoint("toy", "last"), weights_only=False)
    for name, value in spec.model.state_dict().items():
        torch.testing.assert_close(state[training.TRAINED_MODEL][name], value)
        torch.testing.assert_close(state["model"][name], expected[name])
    assert not torch.equal(state["model"]["0.weight"], state[training.TRAINED_MODEL]["0.weight"])
    assert state["model"]["1.num_batches_tracked"] == 10  # counters are copied, not averaged
    # validation scored the average, in eval mode, and the trained network went on training
    assert [step for step, _ in spec.validated] == [5, 10]
    assert all(model is not spec.model and not model.training for _, model in spec.validated)
    best = torch.load(Layout(cfg).checkpoint("toy", "best"), weights_only=False)
    assert best["step"] == 5 and training.TRAINED_MODEL not in best


def test_an_averaged_training_resumes_like_an_uninterrupted_one(make_cfg, tmp_path):
    whole, parts = (make_cfg(**{"paths.checkpoints": str(tmp_path / name)}) for name in ("whole", "parts"))
    training.fit(whole, _averaged_spec(0.6), device=torch.device("cpu"))
    training.fit(parts, _averaged_spec(0.6), device=torch.device("cpu"), stop_after=3)
    training.fit(parts, _averaged_spec(0.6), device=torch.device("cpu"))
    a, b = (torch.load(Layout(c).checkpoint("toy", "last"), weights_only=False) for c in (whole, parts))
    for key in ("model", training.TRAINED_MODEL):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value)
    # switched off on resume, training goes on from the trained weights, not from their average
    off = _averaged_spec(0.0)
    off.steps, off.scheduler = 12, training.poly_schedule(off.optimizer, 12)
    before_steps = []

    def record(*args):
        before_steps.append(off.model[0].weight.detach().clone())

    off.optimizer.register_step_pre_hook(record)
    training.fit(parts, off, device=torch.device("cpu"))
    torch.testing.assert_close(before_steps[0], a[training.TRAINED_MODEL]["0.weight"])


def test_a_weight_average_needs_a_decay_below_one():
    with pytest.raises(ValueError, match="decay must lie in"):
        training.WeightAverage(torch.nn.Linear(1, 1), 1.0)


def test_toy_settings_check_comes_before_the_shape_mismatch(make_cfg):
    cfg = make_cfg()
    training.fit(cfg, _toy_spec(poison=-1, width=1), device=torch.device("cpu"))
    with pytest.raises(training.SettingsMismatch, match="width: 1 there, 2 now"):
        training.fit(cfg, _toy_spec(poison=-1, width=2), device=torch.device("cpu"))


def test_step_batches_depend_only_on_seed_and_step_and_split_over_ranks():
    whole = list(training.StepBatches(10, 4, seed=3, start=0, total=6))
    resumed = list(training.StepBatches(10, 4, seed=3, start=4, total=6))
    assert resumed == whole[4:]
    halves = [list(training.StepBatches(10, 4, seed=3, start=0, total=6, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole
    # every image once per epoch (10 positions = one epoch)
    first_epoch = [index for batch in whole for index, position in batch if position < 10]
    assert sorted(first_epoch) == list(range(10))
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        training.StepBatches(10, 4, seed=3, start=0, total=6, world=3)


def test_precision_helpers_refuse_fp16_on_cpu_and_autocast_bf16():
    from common import runtime

    with pytest.raises(RuntimeError, match="runtime.precision = fp16 needs a CUDA device"):
        runtime.autocast("cpu", "fp16")
    with pytest.raises(ValueError, match="runtime.precision = 'fp8'"):
        runtime.autocast("cpu", "fp8")
    layer = torch.nn.Linear(4, 4)
    with runtime.autocast("cpu", "bf16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with runtime.autocast("cpu", "fp32"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    assert not runtime.grad_scaler("cpu", "bf16").is_enabled()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_toy_training_on_cuda_at_reduced_precision(make_cfg, precision):
    cfg = make_cfg(**{"runtime.precision": precision, "runtime.device": "cuda"})
    spec = _toy_spec(poison=-1)
    spec.model.cuda()
    spec.optimizer = torch.optim.SGD(spec.model.parameters(), lr=0.01)
    spec.scheduler = training.poly_schedule(spec.optimizer, 10)
    outcome = training.fit(cfg, spec, device=torch.device("cuda"))
    assert outcome.step == 10
    state = torch.load(Layout(cfg).checkpoint("toy", "last"), weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
