"""Shared saliency regions split by clusters of the classifier's features over the whole data set.

Where a saliency region overlaps several classes, the guide's dense CRF picks a class per pixel from
the classes' CAMs. On MSRC those are face and body, whose CAMs are nearly the same (face-versus-body
AUC 0.59-0.71, docs/RESULTS.md): per pixel the choice is close to a coin toss. Here the pixels of
every shared region of every training image are described by the classifier's features at its CAM
layer, and clustered with k-means (one model per set of classes, at several cluster counts). Each
cluster is named by the mean, over all its pixels in all images, of the classes' CAMs normalised to
sum to one: thousands of pixels vote instead of one. A pixel of a shared region then takes the class
its clusters name, their votes summed over the cluster counts. Every other pixel is the guide's rule.

Weak supervision holds: the features are the classifier's, trained on image labels; the CAMs name
the clusters; masks only score. The labels are written at the boundary between stages, as a
self-training round's are (benchmarks/self_training.py), with a record naming what they were made
from; then DeepLabs are trained on them, one per seed, and scored on MSRC val.

    python -m benchmarks.cluster_split --from bench/s12/full --seeds 0,1 --out bench/cluster_split
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
from common import files, provenance  # noqa: E402
from common.backbone_parts import to_tensor  # noqa: E402
from common.layout import Layout  # noqa: E402
from common.stages import BY_NAME  # noqa: E402

# bump when the way the labels are made changes: the labels' record, and so TRAIN_DEEPLAB's, changes
VERSION = "cluster-split/1"
CLUSTER_COUNTS = (8, 16, 32)
# pixels of one region kept for fitting and naming (a random sample): bounds memory at 1280 features
PIXELS_PER_REGION = 4000
FIT_PIXELS = 60000


def nearest(points: np.ndarray, centers: np.ndarray, chunk: int = 20000) -> np.ndarray:
    """Index of the nearest center (squared Euclidean) of every row of ``points``."""
    center_norms = (centers**2).sum(1)
    out = np.empty(len(points), np.int64)
    for start in range(0, len(points), chunk):
        part = points[start : start + chunk]
        out[start : start + chunk] = (center_norms[None] - 2 * part @ centers.T).argmin(1)
    return out


@dataclass
class Namer:
    """One k-means model of a set of classes and what its clusters are named: ``names[j]`` is the
    mean normalised CAM of each class (in the set's order) over cluster j's pixels."""

    centers: np.ndarray  # (k, D)
    names: np.ndarray  # (k, classes)


def fit_namers(
    features: np.ndarray, cam_shares: np.ndarray, counts=CLUSTER_COUNTS, seed: int = 0, fit_pixels: int = FIT_PIXELS
) -> list[Namer]:
    """k-means models of ``features`` (n, D) at each cluster count, every cluster named by the mean
    of ``cam_shares`` (classes, n) over its pixels."""
    import cv2

    rng = np.random.default_rng(seed)
    points = np.ascontiguousarray(features, np.float32)
    namers = []
    for count in counts:
        count = min(count, len(points))
        fit = points[rng.choice(len(points), min(len(points), fit_pixels), replace=False)]
        cv2.setRNGSeed(seed)
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
        _, _, centers = cv2.kmeans(fit, count, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
        assigned = nearest(points, centers)
        names = np.zeros((count, cam_shares.shape[0]))
        for cluster in range(count):
            members = assigned == cluster
            if members.any():
                names[cluster] = cam_shares[:, members].mean(1)
        namers.append(Namer(centers, names))
    return namers


def vote(namers: list[Namer], features: np.ndarray) -> np.ndarray:
    """Per pixel of ``features`` (n, D), the index (in the set's order) of the class its clusters
    name, their names summed over the models."""
    points = np.ascontiguousarray(features, np.float32)
    total = np.zeros((len(points), namers[0].names.shape[1]))
    for namer in namers:
        total += namer.names[nearest(points, namer.centers)]
    return total.argmax(1)


class FeatureMaps:
    """The classifier's features at its CAM layer, L2-normalised per pixel, resized to an image."""

    def __init__(self, cfg, class_names: list[str]) -> None:
        from attention.gradcam import find_layer
        from classifier import load_trained

        self.model = load_trained(cfg, class_names, torch.device("cpu"))
        layer = find_layer(self.model, cfg.attention.target_layer or self.model.default_target_layer)
        self.tapped = {}
        layer.register_forward_hook(lambda module, inputs, output: self.tapped.__setitem__("maps", output.detach()))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            self.model(to_tensor(image, self.model.mean, self.model.std)[None])
            maps = self.tapped["maps"].float()
            maps = F.interpolate(maps, size=image.shape[:2], mode="bilinear", align_corners=False)
            return F.normalize(maps[0], dim=0).permute(1, 2, 0).numpy()


def write_labels(base_cfg, target_cfg, seed: int = 0) -> dict:
    """The pseudo labels of ``base_cfg``'s saliency maps and CAMs with shared regions split by
    clusters, written where ``target_cfg``'s TRAIN_DEEPLAB reads them, with their record; returns
    their scores against the training masks (as CREATE_GUIDE reports them)."""
    from guide import make_guide, rules
    from guide.make_guide import Scores

    layout, target = Layout(base_cfg), Layout(target_cfg)
    image_set = datasets.build(base_cfg, "train")
    params = rules.GuideParams.from_config(base_cfg)
    features_of = FeatureMaps(base_cfg, image_set.class_names)
    guide_record = provenance.read_record(base_cfg, BY_NAME["create_guide"])
    inputs = {"guide_inputs": (guide_record or {}).get("inputs"), "split": VERSION, "counts": list(CLUSTER_COUNTS)}
    provenance.record_made_elsewhere(target_cfg, "create_guide", inputs, complete=False)
    rng = np.random.default_rng(seed)
    shared_ids = [i for i in image_set.ids if len(image_set.class_ids(i)) >= 2]
    samples: dict[tuple, list] = {}
    current: dict = {}

    def collect(image, region, box, class_ids, cams, params):
        window = rules.crf_window(box, params.crf_margin, region.shape)
        inside = region[window]
        shares = rules.crf_probabilities(np.stack([cams[c][window] for c in class_ids]), False)[:, inside]
        pixels = current["features"][window][inside]
        keep = rng.choice(len(pixels), min(len(pixels), PIXELS_PER_REGION), replace=False)
        samples.setdefault(tuple(class_ids), []).append((pixels[keep], shares[:, keep]))
        # this pass only gathers pixels; its labels are thrown away, so no CRF runs for them
        return window, np.zeros(inside.shape, np.uint8)

    def cluster_split(image, region, box, class_ids, cams, params):
        window = rules.crf_window(box, params.crf_margin, region.shape)
        inside = region[window]
        labels = np.zeros(inside.shape, np.uint8)
        chosen = vote(namers[tuple(class_ids)], current["features"][window][inside])
        labels[inside] = np.asarray(class_ids, np.uint8)[chosen]
        return window, labels

    for image_id in shared_ids:
        inputs_of_image = make_guide.read_inputs(layout, image_set, image_id)
        current["features"] = features_of(inputs_of_image["image"])
        rules.make_pseudo_label(**inputs_of_image, params=params, split=collect)
    namers = {
        classes: fit_namers(np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts], 1), seed=seed)
        for classes, parts in samples.items()
    }
    scores = Scores(image_set.class_names)
    for image_id in image_set.ids:
        inputs_of_image = make_guide.read_inputs(layout, image_set, image_id)
        split = None
        if image_id in shared_ids:
            current["features"] = features_of(inputs_of_image["image"])
            split = cluster_split
        label = rules.make_pseudo_label(**inputs_of_image, params=params, split=split)
        files.write_label_png(target.pseudo_label(image_id), label)
        scores.update(label, image_set.mask(image_id) if image_set.has_mask(image_id) else None)
    provenance.record_made_elsewhere(target_cfg, "create_guide", inputs)
    return scores.result()


def main_cli(argv=None) -> int:
    from benchmarks import msrc

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, help="a bench run's profile folder (bench/s12/full)")
    parser.add_argument("--shared", default=str(msrc.PROJECT.parent / "shared"))
    parser.add_argument("--profile", choices=sorted(msrc.PROFILES), default="full")
    parser.add_argument("--seeds", default="0,1", help="comma-separated runtime.seed values of the DeepLabs")
    parser.add_argument("--out", default="bench/cluster_split")
    args = parser.parse_args(argv)
    args.overrides = []
    source, out = Path(args.source), Path(args.out)
    if not (source / "gt0" / "checkpoints" / "classifier").is_dir():
        parser.error(f"--from {args.source}: no gt0/checkpoints/classifier there; run make bench first")
    base = msrc.build(args, source, "gt0", {})
    labelled = msrc.build(args, out, "gt0", {})
    msrc.share_outputs(base, labelled, ("saliency", "attention"))
    scores = write_labels(base, labelled)
    per_class = scores["per_class"]
    print(
        f"labels: mIoU {scores['mIoU']:.4f} (precision {scores['precision']:.3f}, recall {scores['recall']:.3f}); "
        + ", ".join(f"{name} {per_class[name]['IoU']:.3f}" for name in per_class)
    )
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "labels.json", json.dumps(scores, indent=1, default=float))
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        trained = msrc.build(args, out, f"gt0_seed{seed}", {"runtime.seed": seed})
        msrc.share_outputs(labelled, trained, ("saliency", "attention", "guide"))
        summary = msrc.run_variant(trained, ["train_deeplab", "eval_deeplab"])
        row = {"seed": seed, "labels_mIoU": scores["mIoU"], **summary["eval_deeplab"]}
        with open(out / "rows.jsonl", "a", encoding="utf-8") as rows:
            rows.write(json.dumps(row, default=float) + "\n")
        print(f"seed {seed}: DeepLab {row['mIoU']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli())
