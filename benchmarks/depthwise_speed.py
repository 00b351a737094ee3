"""Forward and backward time of one dilated depthwise layer: torch's backward against common/depthwise.py's.

The layers are those lite0 dilates at output stride 16 (DeepLab at crop 192, batch 8: a 12 x 12 map;
PiCANet at 224, batch 4: 14 x 14), in both memory formats and at each precision asked for. The faster
backward runs only in channels-last memory; the contiguous rows show why.

    python -m benchmarks.depthwise_speed                          # fp32, both formats
    python -m benchmarks.depthwise_speed --precisions fp32,bf16   # on a CPU with native bf16

Prints a markdown table of milliseconds per call (median of ``--rounds``, the variants taking turns).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import runtime  # noqa: E402
from common.depthwise import _DilatedDepthwise  # noqa: E402

# (kernel, dilation, channels, side, batch)
LAYERS = ((5, 2, 1152, 12, 8), (3, 2, 1152, 12, 8), (5, 2, 1152, 14, 4))


def _milliseconds(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e3


def measure(layer: tuple, channels_last: bool, precision: str, repeats: int) -> dict:
    kernel, dilation, channels, side, batch = layer
    padding = dilation * (kernel - 1) // 2
    x = torch.randn(batch, channels, side, side)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(channels, 1, kernel, kernel, requires_grad=True)
    grad = torch.randn(batch, channels, side, side)  # in the output's memory format, as in training
    if channels_last:
        grad = grad.to(memory_format=torch.channels_last)
    device = torch.device("cpu")

    def native():
        with runtime.autocast(device, precision):
            y = F.conv2d(x, weight, padding=padding, dilation=dilation, groups=channels)
        return torch.autograd.grad(y, (x, weight), grad.to(y.dtype))

    def fast():
        with runtime.autocast(device, precision):
            y = _DilatedDepthwise.apply(x, weight, padding, dilation)
        return torch.autograd.grad(y, (x, weight), grad.to(y.dtype))

    def forward():
        with torch.no_grad(), runtime.autocast(device, precision):
            return F.conv2d(x, weight, padding=padding, dilation=dilation, groups=channels)

    return {
        "forward": _milliseconds(forward, repeats),
        "native": _milliseconds(native, repeats),
        "fast": _milliseconds(fast, repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{torch.get_num_threads()} threads")
    print(
        "| layer (k, dilation, channels, side, batch) | precision | memory | forward ms | "
        "forward+backward ms, torch | the same, common/depthwise.py | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for layer in LAYERS:
        for precision in args.precisions.split(","):
            for channels_last in (False, True):
                rounds = [measure(layer, channels_last, precision, args.repeats) for _ in range(args.rounds)]
                median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
                print(
                    f"| {layer} | {precision} | {'channels_last' if channels_last else 'contiguous'} | "
                    f"{median['forward']:.1f} | {median['native']:.1f} | {median['fast']:.1f} | "
                    f"{median['native'] / median['fast']:.2f}x |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
