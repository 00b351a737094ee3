"""benchmarks/cam_variants.py: how variants are read and reported (the runs themselves need
../shared and a make bench run)."""

from __future__ import annotations

import pytest

from benchmarks import cam_variants


def test_variants_are_read_as_name_and_settings():
    assert cam_variants.parse_variant("base=") == ("base", {})
    name, settings = cam_variants.parse_variant(
        "ms=attention.scales=[0.5,1.0] attention.flip=true saliency.threshold=0.1"
    )
    assert name == "ms"
    assert settings == {"attention.scales": "[0.5,1.0]", "attention.flip": "true", "saliency.threshold": "0.1"}
    with pytest.raises(SystemExit, match="deeplab.steps is not an attention, guide"):
        cam_variants.parse_variant("long=deeplab.steps=900")


def test_table_shows_each_entangled_pair_and_each_seed():
    row = {
        "variant": "ms",
        "settings": {"attention.flip": "true"},
        "pseudo_mIoU": 0.7656,
        "precision": 0.871,
        "recall": 0.86,
        "per_class": {"face": 0.562, "body": 0.433},
        "entangled": {"face/body": {"images": 37, "auc": 0.709}},
        "deeplab": {"0": {"val_mIoU": 0.6453}, "1": {"val_mIoU": 0.66}},
    }
    base = {
        **row,
        "variant": "base",
        "settings": {},
        "entangled": {"face/body": {"images": 37, "auc": None}},
        "deeplab": {},
    }
    lines = cam_variants.table([base, row]).splitlines()
    assert lines[0] == (
        "| variant | pseudo mIoU (P / R) | face/body IoU | face/body AUC | DeepLab seed 0 | DeepLab seed 1 |"
    )
    assert lines[2] == "| base (preset) | 0.7656 (0.871 / 0.860) | 0.562 / 0.433 | - | - | - |"
    assert lines[3] == "| ms (attention.flip=true) | 0.7656 (0.871 / 0.860) | 0.562 / 0.433 | 0.709 | 0.6453 | 0.6600 |"
