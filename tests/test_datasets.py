"""Data set loaders: VOC layout, folder + labels.csv, bounding-box XMLs, the MSRC set in ../shared."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_shared

import datasets
from common import files


def _write_xml(path, names):
    objects = "".join(
        f"<object><name> {n} </name><difficult>0</difficult><bndbox><xmin>1</xmin>"
        f"<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for n in names
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>x.jpg</filename>{objects}</annotation>")


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC"
    rng = np.random.default_rng(0)
    for image_id, (h, w) in {"2007_000001": (20, 30), "2007_000002": (25, 15), "2008_000003": (10, 10)}.items():
        files.write_rgb(root / "JPEGImages" / f"{image_id}.jpg", rng.integers(0, 255, (h, w, 3)))
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 15  # person
    mask[10:12, 10:20] = 255
    files.write_label_png(root / "SegmentationClass" / "2007_000001.png", mask)
    _write_xml(root / "Annotations" / "2007_000002.xml", ["dog", "cat", "dog", "unicorn"])
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n2007_000002\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000003\n")
    return root


def test_voc_layout(voc_root, make_cfg):
    cfg = make_cfg("voc", **{"dataset.root": str(voc_root)})
    train = datasets.build(cfg, "train")
    assert train.ids == ["2007_000001", "2007_000002"]
    assert train.num_classes == 20
    # labels from the mask where there is no XML; from the XML names otherwise (unknown skipped)
    assert train.class_ids("2007_000001") == [15]
    with pytest.warns(UserWarning, match="unicorn"):
        assert train.class_ids("2007_000002") == [8, 12]
    mask = train.mask("2007_000001")
    assert mask.dtype == np.uint8 and mask[3, 3] == 15 and mask[11, 15] == 255
    assert train.mask("2007_000002") is None
    image = train.image("2007_000002")
    assert image.shape == (25, 15, 3) and image.dtype == np.uint8
    assert train.image_size("2007_000002") == (25, 15)
    val = datasets.build(cfg, "val")
    with pytest.raises(FileNotFoundError, match="neither .*2008_000003.xml nor a SegmentationClass"):
        val.labels("2008_000003")


def test_voc_class_names_from_file_and_missing_split(voc_root, make_cfg):
    (voc_root / "class_names.txt").write_text("background\nperson\ndog\n")
    cfg = make_cfg("demo", **{"dataset.kind": "voc", "dataset.root": str(voc_root)})
    train = datasets.build(cfg, "train")
    assert train.class_names == ["person", "dog"]
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        datasets.build(cfg, "test")


def test_folder_with_csv(tmp_path, make_cfg):
    root = tmp_path / "mine"
    for image_id in ("a", "b", "c"):
        files.write_rgb(root / "images" / f"{image_id}.png", np.full((8, 12, 3), 100))
    (root / "labels.csv").write_text("id,labels\na.png,container garbage_bag\nb,cardboard\nc,\n")
    mask = np.zeros((8, 12), np.uint8)
    mask[:4] = 2
    files.write_label_png(root / "masks" / "a.png", mask)
    cfg = make_cfg("folder", **{"dataset.root": str(root)})
    image_set = datasets.build(cfg, "train")
    assert image_set.class_names == ["cardboard", "container", "garbage_bag"]
    assert image_set.ids == ["a", "b", "c"]
    assert image_set.class_ids("a") == [2, 3]
    assert image_set.class_ids("c") == []
    assert image_set.mask("a")[0, 0] == 2 and image_set.mask("b") is None
    # without split lists, val is every image too (e.g. predictions on new photos)
    assert datasets.build(cfg, "val").ids == ["a", "b", "c"]


def test_folder_with_bounding_box_xmls(tmp_path, make_cfg):
    root = tmp_path / "amsterdam"
    for image_id, names in {"img1": ["garbage_bag", "container_small"], "img2": ["cardboard"]}.items():
        files.write_rgb(root / "images" / f"{image_id}.jpg", np.zeros((6, 6, 3)))
        _write_xml(root / "annotations" / f"{image_id}.xml", names)
    (root / "train.txt").write_text("img1\nimg2\n")
    cfg = make_cfg("folder", **{"dataset.root": str(root), "dataset.label_source": "xml"})
    cfg.class_names = ["garbage_bag", "container_small", "cardboard"]
    image_set = datasets.build(cfg, "train")
    assert image_set.class_ids("img1") == [1, 2]
    assert image_set.class_ids("img2") == [3]
    assert np.array_equal(image_set.labels("img2"), np.array([0, 0, 1], np.float32))


def test_folder_errors_name_the_file(tmp_path, make_cfg):
    root = tmp_path / "mine"
    files.write_rgb(root / "images" / "a.png", np.zeros((4, 4, 3)))
    cfg = make_cfg("folder", **{"dataset.root": str(root)})
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        datasets.build(cfg, "train")
    (root / "labels.csv").write_text("b,cardboard\n")
    # the set still loads; the data check (datasets.check) reports both sides of the mismatch
    kinds = {(p.kind, p.image_id) for p in datasets.build(cfg, "train").problems}
    assert kinds == {("image_without_label", "a"), ("label_without_image", "b")}


def test_msrc_objects_from_shared(make_cfg):
    root = needs_shared("data", "msrc_objects")
    cfg = make_cfg("msrc")
    train, val = datasets.build(cfg, "train"), datasets.build(cfg, "val")
    assert (len(train), len(val)) == (325, 88)
    assert train.num_classes == 15 and train.class_names[0] == "aeroplane"
    empty = sum(1 for i in train.ids if not train.class_ids(i))
    assert empty == 57  # as the shared README states
    mask = train.mask(train.ids[0])
    assert mask.shape == train.image_size(train.ids[0])
    assert set(np.unique(mask)) <= set(range(16)) | {255}
    assert root.is_dir()


def test_id_lists_of_paths_give_the_file_stems(tmp_path):
    """DeepLab's train_aug.txt names the image and mask paths on each line."""
    from datasets.base import read_id_list

    listed = tmp_path / "train_aug.txt"
    listed.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n2007_000039\n")
    assert read_id_list(listed) == ["2007_000032", "2007_000039"]
