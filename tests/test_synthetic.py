"""The generated default data set: deterministic, exact, generated once, and hard to solve by colour.

Most tests share one small set (100 + 20 images, saliency 10 + 5) generated once for the module;
the statistics the design promises are checked on the default sizes by the slow test at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import config as config_module
import datasets
from common import files
from datasets import synthetic

SMALL = {"num_train": 100, "num_val": 20, "saliency_num_train": 10, "saliency_num_val": 5}
TINY = {"num_train": 6, "num_val": 2, "saliency_num_train": 2, "saliency_num_val": 1}


def _config(root: Path, **synthetic_settings) -> config_module.Config:
    cfg = config_module.build_config("demo")
    cfg.dataset.root = str(root)
    for key, value in synthetic_settings.items():
        setattr(cfg.synthetic, key, value)
    return config_module.validate(cfg)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> config_module.Config:
    cfg = _config(tmp_path_factory.mktemp("synthetic") / "set", **SMALL)
    synthetic.ensure_generated(cfg)
    return cfg


def _generated_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != synthetic.LOCK)


def _boundary(label: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another value (both sides of every border)."""
    edge = np.zeros(label.shape, bool)
    horizontal, vertical = label[:, 1:] != label[:, :-1], label[1:] != label[:-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:] |= vertical
    edge[:-1] |= vertical
    return edge


def _class_of_instances(record: dict) -> np.ndarray:
    return np.array([0] + [o["class_id"] for o in record["objects"]], np.uint8)


def _object_colours(image_set) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of each (image, class) object region, and its class id."""
    features, labels = [], []
    for image_id in image_set.ids:
        image, mask = image_set.image(image_id), image_set.mask(image_id)
        for class_id in set(np.unique(mask).tolist()) - {0}:
            features.append(image[mask == class_id].astype(np.float64).mean(0))
            labels.append(class_id)
    return np.array(features), np.array(labels)


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5) -> float:
    """Cross-validated accuracy of a nearest-class-centroid classifier."""
    order = np.random.default_rng(0).permutation(len(labels))
    classes = np.unique(labels)
    correct = 0
    for held_out in np.array_split(order, folds):
        train = np.setdiff1d(order, held_out)
        centroids = np.stack([features[train][labels[train] == c].mean(0) for c in classes])
        distances = ((features[held_out, None] - centroids[None]) ** 2).sum(-1)
        correct += int((classes[distances.argmin(1)] == labels[held_out]).sum())
    return correct / len(labels)


# ------------------------------------------------------------------------------------------------
# generation once, determinism, atomicity
# ------------------------------------------------------------------------------------------------
def test_same_seed_same_set_other_seed_other_set(tmp_path):
    a = synthetic.ensure_generated(_config(tmp_path / "a", **TINY))
    b = synthetic.ensure_generated(_config(tmp_path / "b", **TINY))
    other_seed = synthetic.ensure_generated(_config(tmp_path / "c", seed=7, **TINY))
    other_saliency = synthetic.ensure_generated(_config(tmp_path / "d", saliency_seed=7, **TINY))
    names = [p.relative_to(a) for p in _generated_files(a)]
    assert names == [p.relative_to(b) for p in _generated_files(b)]
    pngs = [n for n in names if n.suffix in (".png", ".txt", ".json")]
    jpgs = [n for n in names if n.suffix == ".jpg"]
    assert len(jpgs) == sum(TINY.values())
    for name in pngs:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name in jpgs:  # JPEG bytes may depend on the encoder build; the pictures must not
        difference = np.abs(files.read_image(a / name).astype(int) - files.read_image(b / name).astype(int))
        assert difference.max() <= 2, name

    def differs(first: Path, second: Path, name: Path) -> bool:
        x, y = files.read_image(first / name), files.read_image(second / name)
        return x.shape != y.shape or np.abs(x.astype(int) - y.astype(int)).mean() > 5

    segmentation = [n for n in jpgs if n.parts[0] == "JPEGImages"]
    saliency = [n for n in jpgs if n.parts[0] == "saliency"]
    assert all(differs(a, other_seed, n) for n in segmentation)
    assert not any(differs(a, other_seed, n) for n in saliency)  # the saliency set has its own seed
    assert all(differs(a, other_saliency, n) for n in saliency)
    assert not any(differs(a, other_saliency, n) for n in segmentation)


def test_second_call_returns_at_once_and_new_settings_regenerate(tmp_path):
    cfg = _config(tmp_path / "set", **TINY)
    root = synthetic.ensure_generated(cfg)
    before = {p: p.stat().st_mtime_ns for p in _generated_files(root)}
    started = time.perf_counter()
    assert synthetic.ensure_generated(cfg) == root
    assert synthetic.saliency_roots(cfg) == (root / "saliency" / "train", root / "saliency" / "val")
    assert time.perf_counter() - started < 0.05
    assert {p: p.stat().st_mtime_ns for p in _generated_files(root)} == before

    # other settings: what the generator wrote is replaced, a file of the user's is left alone
    users_file = root / "JPEGImages" / "holiday.jpg"
    users_file.write_bytes(b"not ours")
    fewer = _config(tmp_path / "set", **{**TINY, "num_train": 4})
    synthetic.ensure_generated(fewer)
    assert users_file.read_bytes() == b"not ours"
    assert sorted(p.name for p in (root / "JPEGImages").iterdir()) == sorted(
        ["holiday.jpg"] + [f"syn_train_{i:04d}.jpg" for i in range(1, 5)] + ["syn_val_0001.jpg", "syn_val_0002.jpg"]
    )
    assert datasets.build(fewer, "train").ids == [f"syn_train_{i:04d}" for i in range(1, 5)]
    assert synthetic.statistics(fewer)["segmentation"]["images"] == 6


def test_interrupted_generation_is_never_taken_as_complete(tmp_path, monkeypatch):
    cfg = _config(tmp_path / "set", **TINY)
    real_make_scene, calls = synthetic.make_scene, []

    def crash_on_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_make_scene(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_scene", crash_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_generated(cfg)
    root = cfg.path(cfg.dataset.root)
    assert not (root / synthetic.MARKER).exists() and len(list((root / "JPEGImages").glob("*.jpg"))) == 4
    leftover = root / "JPEGImages" / ".syn_train_0005.jpg.x1y2z3.part"  # as a killed atomic_write leaves
    leftover.write_bytes(b"half")
    monkeypatch.setattr(synthetic, "make_scene", real_make_scene)
    synthetic.ensure_generated(cfg)
    assert (root / synthetic.MARKER).is_file() and not leftover.exists()
    reference = synthetic.ensure_generated(_config(tmp_path / "reference", **TINY))
    for path in _generated_files(reference):
        if path.suffix == ".png":
            assert (root / path.relative_to(reference)).read_bytes() == path.read_bytes()


def test_refuses_to_generate_over_someone_elses_images(tmp_path):
    root = tmp_path / "VOC2012"
    files.write_rgb(root / "JPEGImages" / "2007_000032.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileExistsError, match="2007_000032.jpg"):
        synthetic.ensure_generated(_config(root, **TINY))
    assert (root / "JPEGImages" / "2007_000032.jpg").is_file()
    assert not (root / "SegmentationClass").exists()


# ------------------------------------------------------------------------------------------------
# layout, labels and exact masks
# ------------------------------------------------------------------------------------------------
def test_voc_layout_labels_and_exact_masks(small):
    root = small.path(small.dataset.root)
    train, val = datasets.build(small, "train"), datasets.build(small, "val")
    assert train.ids == [f"syn_train_{i:04d}" for i in range(1, 101)]
    assert val.ids == [f"syn_val_{i:04d}" for i in range(1, 21)]
    assert train.class_names == synthetic.CLASS_NAMES == (root / "class_names.txt").read_text().split()
    assert len(synthetic.CLASS_NAMES) >= 5
    scenes = synthetic.read_scenes(root)
    shapes = set()
    for image_set in (train, val):
        for image_id in image_set.ids:
            mask, image = image_set.mask(image_id), image_set.image(image_id)
            instances = files.read_label_png(root / "SegmentationObject" / f"{image_id}.png")
            record = scenes[image_id]
            assert mask.shape == image.shape[:2] == instances.shape == tuple(record["size"])
            assert all(128 <= side <= 160 for side in mask.shape)
            shapes.add(mask.shape)
            # labels are exactly the classes the mask holds; no ignore band, no other values
            present = set(np.unique(mask).tolist())
            assert present <= set(range(len(synthetic.CLASS_NAMES) + 1)), present
            assert image_set.class_ids(image_id) == sorted(present - {0})
            assert image_set.labels(image_id).shape == (6,)
            # the class mask is the visible part of every class object, pixel for pixel
            np.testing.assert_array_equal(mask, _class_of_instances(record)[instances])
            visible = np.bincount(instances.ravel(), minlength=len(record["objects"]) + 1)[1:]
            assert visible.tolist() == [o["visible_pixels"] for o in record["objects"]]
            assert all(o["visible_pixels"] >= synthetic.MIN_VISIBLE_PIXELS for o in record["objects"])
    assert len({h / w for h, w in shapes}) >= 3  # width and height drawn independently


def test_mask_borders_are_where_the_picture_changes(small):
    """Image gradients are stronger on the mask's object borders than on the same borders moved
    3 pixels: the masks are aligned with what is drawn (a shifted or smoothed mask fails this)."""
    root = small.path(small.dataset.root)
    train = datasets.build(small, "train")
    ratios = []
    for image_id in train.ids:
        instances = files.read_label_png(root / "SegmentationObject" / f"{image_id}.png")
        if not instances.any():
            continue
        grey = train.image(image_id).astype(np.float32).mean(-1)
        gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        border = _boundary(instances)
        moved = [gradient[np.roll(border, shift, axis=(0, 1))].mean() for shift in ((3, 0), (-3, 0), (0, 3), (0, -3))]
        ratios.append(gradient[border].mean() / max(moved))
    ratios = np.array(ratios)
    assert (ratios > 1).mean() >= 0.85 and np.median(ratios) > 1.15, np.percentile(ratios, [5, 50])


def test_objects_have_varied_scales_positions_and_rotations(small):
    records = synthetic.read_scenes(small.path(small.dataset.root))
    extents, angles, centres, counts = [], [], [], []
    for image_id, record in records.items():
        if not image_id.startswith("syn_"):
            continue
        short = min(record["size"])
        classes = [o for o in record["objects"] if o["role"] == "class"]
        counts.append(len(classes))
        for o in classes:
            extents.append(2 * o["radius"] / short)
            angles.append(o["angle"])
            centres.append(np.array(o["centre"]) / record["size"])
    extents, centres = np.array(extents), np.array(centres)
    assert max(counts) <= 3 and 0 in counts and 3 in counts
    assert 0.15 - 1e-6 <= extents.min() and extents.max() <= 0.6 + 1e-6
    assert extents.min() < 0.22 and extents.max() > 0.45  # the whole range is used
    assert np.ptp(angles) > 5 and centres.std(0).min() > 0.15


def test_classes_cannot_be_told_apart_by_colour(small):
    """A nearest-centroid classifier on the mean RGB of each object's pixels stays near chance.

    Six classes: chance is 1/6 = 0.167. This set has about 180 class objects, so the standard
    deviation of a chance-level accuracy is about 0.028; 0.30 is chance + 4.8 sigma. The control
    shows the threshold has teeth: shifting each class's colours by its own random tint of up to
    60 grey levels per channel (much less than the spread of object colours) already crosses it."""
    train = datasets.build(small, "train")
    features, labels = _object_colours(train)
    assert len(labels) > 150 and len(np.unique(labels)) == 6
    accuracy = _nearest_centroid_accuracy(features, labels)
    assert accuracy < 0.30, accuracy
    tint = np.random.default_rng(1).uniform(-60, 60, (7, 3))
    assert _nearest_centroid_accuracy(features + tint[labels], labels) > 0.30


def test_backgrounds_are_textured_and_vary(small):
    """Background pixels (no object within 3 pixels) are not a flat colour: after a blur that
    removes the sensor noise, their grey level still varies (std > 4; a flat colour with this
    noise gives 0.5), and a band-pass (blur 1 - blur 4 pixels) keeps fine texture (mean > 1.0; flat
    gives 0.65). Backgrounds differ from image to image."""
    root = small.path(small.dataset.root)
    train = datasets.build(small, "train")
    means = []
    for image_id in train.ids:
        instances = files.read_label_png(root / "SegmentationObject" / f"{image_id}.png")
        away = ~cv2.dilate((instances > 0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        image = train.image(image_id)
        grey = image.astype(np.float32).mean(-1)
        assert cv2.GaussianBlur(grey, (0, 0), 2)[away].std() > 4.0, image_id
        band = cv2.GaussianBlur(grey, (0, 0), 1) - cv2.GaussianBlur(grey, (0, 0), 4)
        assert np.abs(band[away]).mean() > 1.0, image_id
        means.append(image[away].mean(0))
    assert np.std(means, axis=0).min() > 15


def test_saliency_set_marks_every_object_including_distractors(small):
    train_dir, val_dir = synthetic.saliency_roots(small)
    assert (train_dir, val_dir) == (
        small.path(small.dataset.root) / "saliency" / "train",
        small.path(small.dataset.root) / "saliency" / "val",
    )
    records = synthetic.read_scenes(small.path(small.dataset.root))
    distractor_pixels = 0
    for folder, count, prefix in ((train_dir, 10, "sal_train"), (val_dir, 5, "sal_val")):
        ids = sorted(p.stem for p in (folder / "images").glob("*.jpg"))
        assert ids == [f"{prefix}_{i:04d}" for i in range(1, count + 1)]
        assert ids == sorted(p.stem for p in (folder / "masks").glob("*.png"))
        for image_id in ids:
            mask = files.read_label_png(folder / "masks" / f"{image_id}.png")
            instances = files.read_label_png(folder / "instances" / f"{image_id}.png")
            assert mask.shape == files.read_image(folder / "images" / f"{image_id}.jpg").shape[:2]
            assert set(np.unique(mask).tolist()) <= {0, 255}
            np.testing.assert_array_equal(mask, np.where(instances > 0, 255, 0))
            for obj in records[image_id]["objects"]:
                if obj["role"] == "distractor":
                    distractor_pixels += int((mask[instances == obj["index"]] == 255).sum())
    assert distractor_pixels > 0
    assert not set(records) - {i for i in records if i.startswith(("syn_", "sal_"))}


def test_distractors_are_background_in_the_class_masks(small):
    root = small.path(small.dataset.root)
    records = synthetic.read_scenes(root)
    seen = 0
    for image_id in datasets.build(small, "train").ids:
        mask = files.read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        instances = files.read_label_png(root / "SegmentationObject" / f"{image_id}.png")
        for obj in records[image_id]["objects"]:
            pixels = mask[instances == obj["index"]]
            if obj["role"] == "distractor":
                assert obj["kind"] in synthetic.DISTRACTOR_KINDS and not pixels.any()
                seen += 1
            else:
                assert obj["kind"] == synthetic.CLASS_NAMES[obj["class_id"] - 1]
                assert (pixels == obj["class_id"]).all()
    assert seen > 10


def test_contact_sheet(small, tmp_path):
    path = synthetic.contact_sheet(small.path(small.dataset.root), tmp_path / "sheet.png", n=12)
    sheet = files.read_image(path)
    assert sheet.shape[0] > sheet.shape[1] / 3 and path.stat().st_size < 300_000


# ------------------------------------------------------------------------------------------------
# the default set
# ------------------------------------------------------------------------------------------------
def _design_statistics(cfg) -> dict:
    """The promised properties, measured from the files alone (masks, instance maps, roles)."""
    root = cfg.path(cfg.dataset.root)
    records = synthetic.read_scenes(root)
    ids = [i for split in ("train", "val") for i in datasets.build(cfg, split).ids]
    multi, touching, class_touching, distractor, empty = 0, 0, 0, 0, 0
    for image_id in ids:
        mask = files.read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        instances = files.read_label_png(root / "SegmentationObject" / f"{image_id}.png")
        classes = set(np.unique(mask).tolist()) - {0}
        multi += len(classes) >= 2
        empty += not classes
        pairs = synthetic.touching_pairs(instances)
        roles = {o["index"]: o["role"] for o in records[image_id]["objects"]}
        touching += bool(pairs)
        class_touching += any(roles[a] == roles[b] == "class" for a, b in pairs)
        distractor += any(roles[i] == "distractor" for i in set(np.unique(instances).tolist()) - {0})
    count = len(ids)
    return {
        "images": count,
        "multi_class": multi / count,
        "touching_or_overlapping": touching / count,
        "two_classes_touching_or_overlapping": class_touching / count,
        "with_distractor": distractor / count,
        "empty": empty / count,
    }


@pytest.mark.slow
def test_default_set_meets_the_design(tmp_path):
    cfg = _config(tmp_path / "default")
    started = time.perf_counter()
    synthetic.ensure_generated(cfg)
    seconds = time.perf_counter() - started
    assert seconds < 30, seconds
    measured = _design_statistics(cfg)
    print(f"default set generated in {seconds:.1f} s: {measured}")
    assert measured["images"] == 500
    assert measured["multi_class"] >= 0.30
    assert measured["touching_or_overlapping"] >= 0.10
    assert measured["two_classes_touching_or_overlapping"] >= 0.10
    assert measured["with_distractor"] >= 0.30
    assert 0.02 <= measured["empty"] <= 0.15
    recorded = synthetic.statistics(cfg)["segmentation"]
    for key in ("multi_class", "touching_or_overlapping", "with_distractor", "empty"):
        assert recorded[key] == pytest.approx(measured[key])
    # with ~850 objects a chance-level accuracy has sigma ~0.013: 0.22 is chance + 4 sigma
    features, labels = _object_colours(datasets.build(cfg, "train"))
    val_features, val_labels = _object_colours(datasets.build(cfg, "val"))
    accuracy = _nearest_centroid_accuracy(
        np.concatenate([features, val_features]), np.concatenate([labels, val_labels])
    )
    print(f"nearest-centroid accuracy on mean object colour: {accuracy:.3f}")
    assert accuracy < 0.22
