"""Pictures where the numbers hide the failure: a sheet of the classes DeepLab segments worst.

For each class, a few validation images (where DeepLab's prediction exists) and training images
(where the pseudo label exists) that contain it, one row each:

    image | saliency | CAM of the class | pseudo label | DeepLab prediction | ground truth

read from one run's tmp/ outputs (``common.layout.Layout``) and its data set; a tile the run has
no output for (a val image has no pseudo label, a train image no prediction) says "n/a".
``benchmarks.msrc`` draws it from its base run into docs/benchmark_worst_classes.png.

    python -m benchmarks.sheets --config bench/msrc/full/gt0/runs/config.json --classes body,face,dog
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
from common import files  # noqa: E402
from common.layout import Layout  # noqa: E402

COLUMNS = ("image", "saliency", "CAM of the class", "pseudo label", "prediction", "truth")
TILE_INCHES = (1.6, 1.2)  # width, height of one tile


def worst_classes(per_class_iou: dict, count: int = 3) -> list[tuple[str, float]]:
    """The ``count`` classes of lowest IoU, lowest first; background and classes without a score
    (None or NaN: absent from the val set) are left out."""
    scored = [
        (float(iou), name)
        for name, iou in per_class_iou.items()
        if name != "background" and iou is not None and math.isfinite(float(iou))
    ]
    return [(name, iou) for iou, name in sorted(scored)[:count]]


def images_with_class(image_set, class_id: int, count: int, needs) -> list[str]:
    """Up to ``count`` ids of ``image_set`` whose ground truth holds ``class_id`` and for which
    ``needs(id)`` is true, those where the class covers most of the image first (the failure is
    then visible at tile size); ties in id order."""
    found = []
    for image_id in image_set.ids:
        if class_id not in image_set.class_ids(image_id) or not image_set.has_mask(image_id) or not needs(image_id):
            continue
        mask = image_set.mask(image_id)
        found.append((-float(np.mean(mask == class_id)), image_id))
    return [image_id for _, image_id in sorted(found)[:count]]


def _cam_overlay(image: np.ndarray, layout: Layout, image_id: str, class_id: int) -> np.ndarray | None:
    """The class's CAM as a heat map over the image, or None without a CAM of that class."""
    from matplotlib import colormaps

    if not layout.cams(image_id).exists():
        return None
    cams = layout.read_cams(image_id)
    matches = np.flatnonzero(cams.class_ids == class_id)
    if not len(matches):
        return None
    heat = cams.upsampled()[int(matches[0])]
    if heat.shape != image.shape[:2]:
        return None
    colours = (colormaps["jet"](heat)[..., :3] * 255).astype(np.float32)
    return (0.5 * image.astype(np.float32) + 0.5 * colours).astype(np.uint8)


def _label_tile(path: Path) -> np.ndarray | None:
    return files.colorize(files.read_label_png(path)) if path.exists() else None


def row_tiles(layout: Layout, image_set, image_id: str, class_id: int) -> list[np.ndarray | None]:
    """The six tiles of one row (None where the run has no such output for the image)."""
    image = image_set.image(image_id)
    saliency = None
    if layout.saliency_prob(image_id).exists():
        saliency = np.repeat((layout.read_saliency(image_id) * 255).astype(np.uint8)[..., None], 3, axis=2)
    mask = image_set.mask(image_id)
    return [
        image,
        saliency,
        _cam_overlay(image, layout, image_id, class_id),
        _label_tile(layout.pseudo_label(image_id)),
        _label_tile(layout.prediction(image_id)),
        files.colorize(mask) if mask is not None else None,
    ]


def draw(cfg, class_names: list[str], path: Path, val_images: int = 2, train_images: int = 1) -> list[dict]:
    """Draw the sheet of ``class_names`` from ``cfg``'s run into ``path`` (PNG); returns its rows
    as {"class", "split", "id"}. Raises ValueError for a class name the data set does not have."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = Layout(cfg)
    splits = {"val": datasets.build(cfg, "val"), "train": datasets.build(cfg, "train")}
    known = splits["train"].class_names
    rows = []
    # a val row needs DeepLab's prediction, a train row the pseudo label
    wanted = (("val", val_images, layout.prediction), ("train", train_images, layout.pseudo_label))
    for name in class_names:
        if name not in known:
            raise ValueError(
                f"worst-class sheet: no class {name!r} in {cfg.dataset.root} (classes: {', '.join(known)})"
            )
        class_id = known.index(name) + 1
        for split, count, output in wanted:
            image_set = splits[split]
            for image_id in images_with_class(image_set, class_id, count, lambda i, path=output: path(i).exists()):
                rows.append(
                    {
                        "class": name,
                        "split": split,
                        "id": image_id,
                        "tiles": row_tiles(layout, image_set, image_id, class_id),
                    }
                )
    width, height = TILE_INCHES
    figure, axes = plt.subplots(
        max(len(rows), 1),
        len(COLUMNS),
        dpi=80,
        squeeze=False,
        figsize=(width * len(COLUMNS), height * max(len(rows), 1) + 0.3),
    )
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for column, title in enumerate(COLUMNS):
        axes[0, column].set_title(title, fontsize=8)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no image with these classes has outputs", ha="center", va="center", fontsize=7)
    for index, row in enumerate(rows):
        axes[index, 0].set_ylabel(f"{row['class']}\n{row['split']} {row['id']}", fontsize=7)
        for column, tile in enumerate(row["tiles"]):
            axis = axes[index, column]
            if tile is None:
                axis.set_facecolor("0.85")
                axis.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=8, transform=axis.transAxes)
            else:
                axis.imshow(tile)
    figure.tight_layout(pad=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    # 256 colours keep the sheet a third of its size in the repository, with no visible loss
    from PIL import Image

    with Image.open(path) as drawn:
        quantised = drawn.convert("RGB").quantize(256)
    quantised.save(path, optimize=True)
    return [{k: row[k] for k in ("class", "split", "id")} for row in rows]


def main_cli(argv=None) -> int:
    import config as config_module

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a run's runs/config.json")
    parser.add_argument(
        "--classes",
        default="",
        help="comma-separated class names (default: the three of "
        "lowest IoU in the run's runs/eval_deeplab/report.json)",
    )
    parser.add_argument("--output", default="docs/benchmark_worst_classes.png")
    args = parser.parse_args(argv)
    cfg = config_module.load_config(args.config)
    names = [n for n in args.classes.split(",") if n]
    if not names:
        report = Layout(cfg).run_dir("eval_deeplab") / "report.json"
        names = [name for name, _ in worst_classes(json.loads(report.read_text())["per_class_IoU"])]
    print(draw(cfg, names, Path(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
