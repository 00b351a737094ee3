"""Bounding-box CRF against whole-image CRF: time and pseudo-label quality on the same inputs.

The region rule runs a dense CRF for every saliency region that several classes overlap. The
stage runs it on the region's bounding box plus ``guide.crf_margin``; the reference runs it on the
whole image for every such region. Both variants label the same images from the same inputs
(read once beforehand, so file reading is not timed), alternating image by image so that load
from other processes hits both alike. Nothing is written.

    python -m benchmarks.guide_crf_speed --preset demo --images 200 [--set section.key=value ...]
    python -m benchmarks.guide_crf_speed --preset msrc --oracle-saliency   # no CREATE_SALIENCY output yet

``--oracle-saliency`` uses the ground-truth foreground (mask in 1..C) as the saliency map, for
timing on sets where only CREATE_ATTENTION has run; its mIoU is then not that of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config as config_module  # noqa: E402
import datasets  # noqa: E402
from common import metrics  # noqa: E402
from common.layout import Layout  # noqa: E402
from guide.make_guide import read_inputs  # noqa: E402
from guide.rules import GuideParams, make_pseudo_label, plan_regions  # noqa: E402


def oracle_saliency(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Ground-truth foreground as a probability map (1 on classes 1..C, else 0)."""
    return ((mask >= 1) & (mask <= num_classes)).astype(np.float32)


def measure(cfg, split: str, num_images: int, oracle: bool, only_multi_class: bool) -> dict:
    """Time and score both CRF variants on up to ``num_images`` images of ``split``."""
    image_set = datasets.build(cfg, split)
    layout = Layout(cfg)
    box_params = GuideParams.from_config(cfg)
    whole_params = GuideParams.from_config(cfg, crf_whole_image=True)
    matrices = {name: metrics.ConfusionMatrix(image_set.num_classes + 1) for name in ("box", "whole")}
    seconds = {"box": 0.0, "whole": 0.0}
    seconds_multi = {"box": 0.0, "whole": 0.0}
    images = images_multi = regions_multi = agreeing = pixels = 0
    for image_id in tqdm(image_set.ids, desc=f"crf speed {split}"):
        if images >= num_images:
            break
        mask = image_set.mask(image_id)
        if (
            not layout.cams(image_id).exists()
            or (oracle and mask is None)
            or (not oracle and not layout.saliency_prob(image_id).exists())
        ):
            continue  # inputs not computed (yet) for this image
        saliency = oracle_saliency(mask, image_set.num_classes) if oracle else None
        inputs = read_inputs(layout, image_set, image_id, saliency=saliency)
        plan = plan_regions(inputs["saliency_prob"] >= box_params.saliency_threshold, inputs["class_masks"], box_params)
        multi = int((plan.classes_per_region >= 2).sum())
        if only_multi_class and not multi:
            continue
        labels = {}
        for name, params in (("box", box_params), ("whole", whole_params)):
            started = time.perf_counter()
            labels[name] = make_pseudo_label(**inputs, params=params)
            elapsed = time.perf_counter() - started
            seconds[name] += elapsed
            if multi:
                seconds_multi[name] += elapsed
            if mask is not None:
                matrices[name].update(mask, labels[name])
        images += 1
        images_multi += bool(multi)
        regions_multi += multi
        agreeing += int((labels["box"] == labels["whole"]).sum())
        pixels += labels["box"].size
    return {
        "split": split,
        "images": images,
        "images_with_multi_class_regions": images_multi,
        "multi_class_regions": regions_multi,
        "oracle_saliency": oracle,
        "crf_margin": box_params.crf_margin,
        "seconds_box": round(seconds["box"], 3),
        "seconds_whole_image": round(seconds["whole"], 3),
        "speedup_all_images": round(seconds["whole"] / max(seconds["box"], 1e-9), 2),
        "seconds_box_multi_class_images": round(seconds_multi["box"], 3),
        "seconds_whole_image_multi_class_images": round(seconds_multi["whole"], 3),
        "speedup_multi_class_images": round(seconds_multi["whole"] / max(seconds_multi["box"], 1e-9), 2),
        "mIoU_box": matrices["box"].mean_iou(),
        "mIoU_whole_image": matrices["whole"].mean_iou(),
        "pixels_agreeing": agreeing / pixels if pixels else float("nan"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--oracle-saliency", action="store_true")
    parser.add_argument(
        "--only-multi-class",
        action="store_true",
        help="count only images with at least one multi-class saliency region",
    )
    args = parser.parse_args(argv)
    cfg = config_module.validate(config_module.build_config(args.preset, args.overrides))
    print(json.dumps(measure(cfg, args.split, args.images, args.oracle_saliency, args.only_multi_class), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
