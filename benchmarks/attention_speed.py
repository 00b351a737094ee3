"""CREATE_ATTENTION speed against the original's way of working, on the same images, same run.

The original computed Grad-CAM one image at a time, squashed to 224 x 224, with one forward and
one backward pass through the whole network per class. Ours batches equal-size images at their own
size, does one forward per batch and, per class slot, a backward through the head only.
The benchmark also checks that our maps equal a plain per-class reference (hooks, full forward and
backward per class) on the same input, i.e. the speed does not come from computing something else.

    python -m benchmarks.attention_speed --preset msrc --images 100 [--set section.key=value ...]

Needs a trained classifier (TRAIN_SEED) for the chosen config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config as config_module  # noqa: E402
import datasets  # noqa: E402
from attention.gradcam import GradCam, normalise_maps, per_class_grad_cam  # noqa: E402
from attention.make_cam import same_size_batches  # noqa: E402
from classifier import find_layer, load_trained  # noqa: E402
from classifier.data import to_tensor  # noqa: E402


def measure(cfg, num_images: int) -> dict:
    torch.set_grad_enabled(True)
    device = torch.device("cpu")
    image_set = datasets.build(cfg, "train")
    model = load_trained(cfg, image_set.class_names, device)
    target = cfg.attention.target_layer or model.default_target_layer
    layer = find_layer(model, target)
    ids = [i for i in image_set.ids if image_set.class_ids(i)][:num_images]
    images = {i: to_tensor(image_set.image(i), model.mean, model.std) for i in ids}
    classes = {i: [c - 1 for c in image_set.class_ids(i)] for i in ids}
    class_maps = sum(len(c) for c in classes.values())

    # the original's way: squashed to 224, batch 1, forward + backward per class
    started = time.perf_counter()
    for image_id in ids:
        squashed = F.interpolate(images[image_id][None], size=(224, 224), mode="bilinear", align_corners=False)[0]
        for class_index in classes[image_id]:
            per_class_grad_cam(model, layer, squashed, class_index)
    original_seconds = time.perf_counter() - started

    # ours: equal-size batches at the images' own size, one forward per batch
    started = time.perf_counter()
    ours = {}
    with GradCam(model, target) as grad_cam:
        for batch_ids in same_size_batches(image_set, ids, cfg.attention.batch_size):
            batch = torch.stack([images[i] for i in batch_ids])
            for image_id, maps in zip(batch_ids, grad_cam(batch, [classes[i] for i in batch_ids])):
                ours[image_id] = maps
    ours_seconds = time.perf_counter() - started

    # the same maps as a per-class reference at the same (own) size
    worst = 0.0
    for image_id in ids:
        for slot, class_index in enumerate(classes[image_id]):
            expected = normalise_maps(per_class_grad_cam(model, layer, images[image_id], class_index)[None])
            got = normalise_maps(ours[image_id][slot][None])
            worst = max(worst, float((expected - got).abs().max()))

    return {
        "images": len(ids),
        "class_maps": class_maps,
        "original_seconds": round(original_seconds, 2),
        "ours_seconds": round(ours_seconds, 2),
        "speedup": round(original_seconds / ours_seconds, 2),
        "max_abs_difference_vs_reference": worst,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args(argv)
    cfg = config_module.validate(config_module.build_config(args.preset, args.overrides))
    print(json.dumps(measure(cfg, args.images), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
