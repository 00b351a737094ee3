"""benchmarks/deeplab_variants.py: its table pairs each variant's DeepLab with the full-supervision
DeepLab of the same seed."""

from __future__ import annotations

import pytest

from benchmarks import deeplab_variants


def _row(variant: str, seed: int, miou: float, gain: float | None = 0.001) -> dict:
    return {"variant": variant, "seed": seed, "mIoU": miou, "plateau": None if gain is None else {"gain": gain}}


def test_table_gives_each_seed_its_own_ratio_and_the_mean_of_the_ratios():
    full = deeplab_variants.FULL
    rows = [
        _row("base", 0, 0.60),
        _row(full, 0, 0.80),
        _row("base", 1, 0.70, gain=None),
        _row(full, 1, 0.70),
        _row("ignore", 0, 0.40),
        _row("ignore", 0, 0.44),  # a rerun replaces the earlier row
    ]
    lines = deeplab_variants.table(rows).splitlines()
    base = next(line for line in lines if line.startswith("| base |"))
    assert "s0 0.600 / s1 0.700 | 0.650 |" in base
    assert "0.750 / 1.000" in base and f"| {(0.75 + 1.0) / 2:.3f} |" in base
    assert base.endswith("| +0.001 / - |")
    ignore = next(line for line in lines if line.startswith("| ignore |"))
    assert "s0 0.440 | 0.440 | 0.550 | 0.550 |" in ignore
    assert lines[-1].startswith(f"| {full} |") and "| - | - |" in lines[-1]  # full supervision last, no ratio


def test_variants_are_deeplab_or_eval_settings_only():
    assert deeplab_variants.parse_variant("ig=deeplab.ignore_hardest=0.2") == (
        "ig",
        {"deeplab.ignore_hardest": "0.2"},
    )
    with pytest.raises(SystemExit, match="guide.rule"):
        deeplab_variants.parse_variant("x=guide.rule=pixel")
    with pytest.raises(SystemExit, match="gt_percentage"):
        deeplab_variants.parse_variant("x=deeplab.gt_percentage=100")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["full=deeplab.lr=0.01"], "full"),
        (["a=deeplab.lr=0.01", "a=deeplab.lr=0.02"], "'a' is taken"),
        (["a=deeplab.lr=0.01", "--set", "deeplab.gt_percentage=100"], "gt_percentage"),
    ],
)
def test_names_and_settings_that_would_mix_trainings_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        deeplab_variants.main_cli(argv)
    assert message in capsys.readouterr().err
