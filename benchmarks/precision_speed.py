"""Training speed of the three networks at each precision: steps per second of one training step.

A step here is what ``common.training.fit`` does per batch: forward under ``runtime.autocast``,
the stage's own loss, backward (through the fp16 grad scaler), the optimiser and the schedule,
on random batches of the configured size (data loading is left out: it is the same work at every
precision). Networks are built as the stages build them (pretrained, BatchNorm frozen where the
stage freezes it).

    python -m benchmarks.precision_speed                       # fp32 vs bf16 on the CPU, demo sizes
    python -m benchmarks.precision_speed --steps 20 --rounds 5 --precisions fp32,bf16 --trainings classifier
    python -m benchmarks.precision_speed --device cuda --precisions fp32,bf16,fp16 --channels-last
    python -m benchmarks.precision_speed --preset msrc --trainings deeplab,saliency --precisions fp32 \
        --channels-last --without depthwise,dead_taps

Prints a markdown table (median steps/s over ``--rounds`` rounds in which the precisions take
turns, speed-up over fp32, peak GPU memory) and writes it as JSON to bench/precision_speed.json.
``--without`` also measures each network with one of the project's CPU speed-ups undone, in the
same rounds: ``depthwise`` (torch's own backward of the dilated depthwise layers instead of
common/depthwise.py's), ``dead_taps`` (the ASPP's convolutions with every tap, common/dead_taps.py),
``local_offsets`` (PiCANet's local attention on the unfolded neighbourhoods, saliency/picanet.py).
``--native-depthwise`` is ``--without depthwise``.
The speed says nothing of quality: compare the trainings' validation numbers at each precision
over several seeds before changing ``runtime.precision``'s default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config as config_module  # noqa: E402
from common import runtime  # noqa: E402
from common.dead_taps import keep_dead_taps  # noqa: E402
from common.depthwise import use_native_depthwise_backward  # noqa: E402
from saliency.picanet import use_unfolded_local_attention  # noqa: E402

TRAININGS = ("classifier", "saliency", "deeplab")
NUM_CLASSES = 6  # the demo's classes; the shape of the head hardly matters to the speed


# what --without undoes: name -> (what the variant is called in the table, the function undoing it)
UNDOABLE = {
    "depthwise": ("torch's depthwise backward", use_native_depthwise_backward),
    "dead_taps": ("every ASPP tap", keep_dead_taps),
    "local_offsets": ("PiCANet's unfolded local attention", use_unfolded_local_attention),
}


def build(name: str, cfg, device: torch.device):
    """(model, optimizer, scheduler, loss(network, batch, device), batch, train_mode, grad_clip)
    for training ``name`` as its stage configures it; ``batch`` is a random CPU batch."""
    generator = torch.Generator().manual_seed(0)
    if name == "classifier":
        from classifier.models import build_classifier
        from classifier.train_classifier import bce_loss, make_optimizer

        settings = cfg.classifier
        model = build_classifier(
            backbone=settings.backbone,
            num_classes=NUM_CLASSES,
            pretrained=settings.pretrained,
            weights_path=settings.weights_path,
            output_stride=settings.output_stride,
        ).to(device)
        optimizer, scheduler = make_optimizer(model, settings)
        size, count = settings.crop_size, settings.batch_size
        batch = (
            torch.randn(count, 3, size, size, generator=generator),
            (torch.rand(count, NUM_CLASSES, generator=generator) < 0.3).float(),
        )

        def train_mode(net):
            net.train()
            if settings.pretrained:
                net.freeze_batchnorm()

        return model, optimizer, scheduler, bce_loss, batch, train_mode, 0.0
    if name == "saliency":
        from saliency.picanet import PiCANet
        from saliency.train_saliency import _freeze_encoder_batchnorm, make_optimizer, supervision_loss

        settings = cfg.saliency
        model = PiCANet(encoder=settings.encoder, paper_attention=settings.paper_attention)
        if settings.pretrained:
            model.load_imagenet(settings.weights_path)
        model.to(device)
        optimizer, scheduler = make_optimizer(model, settings)
        size, count = settings.input_size, settings.train_batch_size
        batch = (
            torch.rand(count, 3, size, size, generator=generator),
            (torch.rand(count, 1, size, size, generator=generator) < 0.4).float(),
        )

        def train_mode(net):
            net.train()
            if settings.freeze_encoder_bn:
                _freeze_encoder_batchnorm(net)

        return model, optimizer, scheduler, supervision_loss, batch, train_mode, settings.grad_clip
    if name == "deeplab":
        from deeplab.train_deeplab import build_from_config, make_optimizer, pixel_loss

        settings = cfg.deeplab
        model = build_from_config(cfg, NUM_CLASSES + 1)
        model.freeze_early_layers(settings.frozen_stride)  # as TRAIN_DEEPLAB does: backward stops early
        model = model.to(device)
        optimizer, scheduler = make_optimizer(model, settings)
        size, count = settings.crop_size, settings.batch_size
        batch = (
            torch.randn(count, 3, size, size, generator=generator),
            torch.randint(0, NUM_CLASSES + 1, (count, size, size), generator=generator),
        )
        frozen = settings.freeze_backbone_bn and settings.pretrained_backbone

        def train_mode(net):
            net.train()
            net.freeze_backbone_batchnorm(frozen)

        return model, optimizer, scheduler, pixel_loss, batch, train_mode, 0.0
    raise ValueError(f"unknown training {name!r}; expected one of {', '.join(TRAININGS)}")


def measure(
    name: str,
    cfg,
    device: torch.device,
    precision: str,
    steps: int,
    warmup: int = 2,
    channels_last: bool = False,
    pin_memory: bool = True,
    without: str = "",
) -> dict:
    """Steps per second of ``steps`` training steps of ``name`` (after ``warmup`` untimed ones),
    with the loss of the last step and the peak GPU memory (MiB; None on the CPU). Every step
    copies its batch from the host as training does (from pinned memory unless ``pin_memory`` is
    False). ``without``: a key of :data:`UNDOABLE`, the speed-up left out (every one is in by
    default, as the stages build the networks)."""
    torch.manual_seed(0)
    model, optimizer, scheduler, loss_fn, batch, train_mode, grad_clip = build(name, cfg, device)
    undone = UNDOABLE[without][1](model) if without else 0
    if channels_last:  # the weights only, as runtime.memory_format does: the batch comes as loaded
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and pin_memory:
        batch = tuple(t.pin_memory() for t in batch)
    train_mode(model)
    scaler = runtime.grad_scaler(device, precision)

    def step() -> float:
        with runtime.autocast(device, precision):
            loss = loss_fn(model, batch, device)
        value = loss.detach().float().item()  # the loop's per-step non-finite check syncs here too
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return value

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        last_loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "training": name,
        "precision": precision,
        "channels_last": channels_last,
        "pin_memory": pin_memory,
        "without": without,
        "undone_layers": undone,
        "steps_per_s": steps / seconds,
        "seconds": seconds,
        "steps": steps,
        "last_loss": last_loss,
        "peak_memory_mib": peak,
        "device": str(device),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| training | precision | channels_last | speed-up left out | steps/s | vs fp32 | all speed-ups against this "
        "| peak GPU MiB | last loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def key(r: dict, **change) -> tuple:
        r = {**r, **change}
        return (r["training"], r["precision"], r["channels_last"], r.get("without", ""))

    speeds = {key(r): r["steps_per_s"] for r in results}
    for r in results:
        base = speeds.get(key(r, precision="fp32"))
        everything = speeds.get(key(r, without=""))
        ratio = f"{r['steps_per_s'] / base:.2f}x" if base else ""
        gain = f"{everything / r['steps_per_s']:.2f}x" if r.get("without") and everything else ""
        peak = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else ""
        left_out = f"{UNDOABLE[r['without']][0]} ({r['undone_layers']} layers)" if r.get("without") else "none"
        lines.append(
            f"| {r['training']} | {r['precision']} | {r['channels_last']} | {left_out} | {r['steps_per_s']:.2f} | "
            f"{ratio} | {gain} | {peak} | {r['last_loss']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trainings", default=",".join(TRAININGS))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per precision (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0 = torch's default)")
    parser.add_argument("--channels-last", action="store_true", help="also measure channels_last memory format")
    parser.add_argument(
        "--without",
        default="",
        help=f"comma-separated speed-ups to also measure each network without: {', '.join(UNDOABLE)}",
    )
    parser.add_argument("--native-depthwise", action="store_true", help="the same as --without depthwise")
    parser.add_argument("--output", default="bench/precision_speed.json")
    args = parser.parse_args(argv)
    left_out = [name.strip() for name in args.without.split(",") if name.strip()]
    left_out += ["depthwise"] * args.native_depthwise
    unknown = sorted(set(left_out) - set(UNDOABLE))
    if unknown:
        parser.error(f"--without {','.join(unknown)}: expected some of {', '.join(UNDOABLE)}")
    left_out = list(dict.fromkeys(left_out))
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_module.build_config(args.preset, args.overrides)
    device = runtime.select_device(args.device)
    results = []
    for name in args.trainings.split(","):
        for memory_format in [False, True] if args.channels_last else [False]:
            # the variants take turns, round after round, so a machine whose load changes (a shared
            # one) slows each alike; the median round is reported
            variants = [(p, without) for p in args.precisions.split(",") for without in ["", *left_out]]
            rounds: dict[tuple, list[dict]] = {v: [] for v in variants}
            for round_index in range(args.rounds):
                for precision, without in rounds:
                    result = measure(
                        name, cfg, device, precision, args.steps, args.warmup, memory_format, without=without
                    )
                    print(
                        f"{name} {precision} channels_last={memory_format} "
                        f"{'without ' + without + ' ' if without else ''}round {round_index + 1}: "
                        f"{result['steps_per_s']:.2f} steps/s",
                        flush=True,
                    )
                    rounds[precision, without].append(result)
            for measured in rounds.values():
                ordered = sorted(measured, key=lambda r: r["steps_per_s"])
                median = dict(ordered[len(ordered) // 2])
                median["rounds_steps_per_s"] = [r["steps_per_s"] for r in measured]
                results.append(median)
    print("\n" + table(results))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"device": str(device), "threads": torch.get_num_threads(), "results": results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
