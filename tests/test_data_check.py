"""The data check (datasets/check.py) and the image decoding it relies on (common/files.py).

Every defect a user met on a folder set is written into a tiny generated set, one per case, and
the check must name its file and the kind of problem; decoding of 16-bit and EXIF-rotated images,
skip mode in datasets.build, a clean set, and the MSRC set from ../shared."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import needs_shared
from PIL import Image

import datasets
from common import files, metrics
from datasets.check import DataError, check_data, enforce, write_report

CLASSES = ["car", "person"]
SIZE = (24, 32)  # (H, W) of every generated image


def _noise(seed: int, size=SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _mask(size=SIZE, value: int = 1) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    mask[: size[0] // 2, : size[1] // 2] = value
    return mask


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[files.EXIF_ORIENTATION_TAG] = orientation
    return exif


def clean_folder(root):
    """a.jpg (car, mask), b.png (person, mask), c.jpg (both, no mask); class_names.txt given."""
    files.write_rgb(root / "images" / "a.jpg", _noise(1))
    files.write_rgb(root / "images" / "b.png", _noise(2))
    files.write_rgb(root / "images" / "c.jpg", _noise(3))
    files.write_label_png(root / "masks" / "a.png", _mask(value=1))
    files.write_label_png(root / "masks" / "b.png", _mask(value=2))
    (root / "labels.csv").write_text("id,labels\na.jpg,car\nb,person\nc,car person\n", encoding="utf-8")
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def clean_voc(root):
    """VOC layout: v1 with mask and XML, v2 with mask only; class_names.txt given."""
    for number in (1, 2):
        files.write_rgb(root / "JPEGImages" / f"v{number}.jpg", _noise(10 + number))
        files.write_label_png(root / "SegmentationClass" / f"v{number}.png", _mask(value=number))
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "v1.xml").write_text("<annotation><object><name>car</name></object></annotation>")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("v1\nv2\n")
    (root / "class_names.txt").write_text("background\n" + "\n".join(CLASSES) + "\n")
    return root


def _cut(path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _append_csv(root, text: str) -> None:
    with open(root / "labels.csv", "a", encoding="utf-8") as handle:
        handle.write(text)


def _empty_image(root):
    (root / "images" / "a.jpg").write_bytes(b"")


def _truncated_jpeg(root):
    _cut(root / "images" / "a.jpg")


def _truncated_png(root):
    _cut(root / "images" / "b.png")


def _not_an_image(root):
    (root / "images" / "b.png").write_bytes(b"this is a text file, not a PNG")


def _listed_without_image(root):
    (root / "train.txt").write_text("a\nb\nc\nd\n")
    _append_csv(root, "d,car\n")


def _mask_of_another_size(root):
    files.write_label_png(root / "masks" / "a.png", _mask(size=(20, 32)))


def _mask_of_stored_pixels(root):
    # a phone photo stored sideways (EXIF orientation 6); its mask drawn on the stored pixels
    Image.fromarray(_noise(4, size=(32, 24))).save(root / "images" / "a.jpg", exif=_exif(6))
    files.write_label_png(root / "masks" / "a.png", _mask(size=(32, 24)))


def _mask_values_beyond_classes(root):
    files.write_label_png(root / "masks" / "a.png", _mask(value=7))


def _rgb_mask_off_palette(root):
    rgb = files.colorize(_mask(value=1))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(root / "masks" / "a.png")


def _sixteen_bit_mask_beyond_255(root):
    Image.fromarray(_mask(value=1).astype(np.uint16) * 300).save(root / "masks" / "a.png")


def _unreadable_mask(root):
    (root / "masks" / "a.png").write_bytes(b"not a png")


def _duplicate_rows(root):
    _append_csv(root, "a,person\n")


def _duplicate_in_split_list(root):
    (root / "train.txt").write_text("a\nb\na\nc\n")


def _two_files_for_one_id(root):
    files.write_rgb(root / "images" / "a.png", _noise(5))


def _label_row_without_image(root):
    _append_csv(root, "zz,car\n")


def _image_without_label_row(root):
    files.write_rgb(root / "images" / "d.jpg", _noise(6))


def _unknown_class_name(root):
    _append_csv(root, "")  # keep the file as it is; rewrite c's row
    text = (root / "labels.csv").read_text().replace("c,car person", "c,Car person")
    (root / "labels.csv").write_text(text)


def _misspelt_class_without_class_list(root):
    (root / "class_names.txt").unlink()
    _unknown_class_name(root)


def _labels_csv_not_utf8(root):
    (root / "labels.csv").write_bytes("id,labels\na,car\nb,person caf\u00e9\nc,car\n".encode("latin-1"))


def _voc_mask_missing(root):
    (root / "SegmentationClass" / "v2.png").unlink()


def _voc_unknown_class_in_xml(root):
    (root / "Annotations" / "v1.xml").write_text("<annotation><object><name>persn</name></object></annotation>")


# (make the defect, which set, problem kind, file name in the problem's path, image id, text in the message)
CASES = [
    pytest.param(_empty_image, "folder", "empty_image", "a.jpg", "a", "0 bytes", id="0-byte image"),
    pytest.param(_truncated_jpeg, "folder", "truncated_image", "a.jpg", "a", "JPEG", id="truncated jpeg"),
    pytest.param(_truncated_png, "folder", "truncated_image", "b.png", "b", "PNG", id="truncated png"),
    pytest.param(_not_an_image, "folder", "unreadable_image", "b.png", "b", "cannot", id="unreadable image"),
    pytest.param(_listed_without_image, "folder", "missing_image", "d", "d", "no image", id="listed, no image"),
    pytest.param(_mask_of_another_size, "folder", "mask_size", "a.png", "a", "20x32", id="mask size"),
    pytest.param(
        _mask_of_stored_pixels,
        "folder",
        "mask_size",
        "a.png",
        "a",
        "EXIF orientation 6",
        id="mask of the unrotated photo",
    ),
    pytest.param(_mask_values_beyond_classes, "folder", "mask_values", "a.png", "a", "values 7", id="mask values"),
    pytest.param(_rgb_mask_off_palette, "folder", "mask_colours", "a.png", "a", "(1, 2, 3)", id="rgb mask colour"),
    pytest.param(
        _sixteen_bit_mask_beyond_255, "folder", "unreadable_mask", "a.png", "a", "value 300", id="16-bit mask value"
    ),
    pytest.param(_unreadable_mask, "folder", "unreadable_mask", "a.png", "a", "cannot", id="unreadable mask"),
    pytest.param(_duplicate_rows, "folder", "duplicate_id", "labels.csv", "a", "lines 2, 5", id="duplicated csv row"),
    pytest.param(
        _duplicate_in_split_list, "folder", "duplicate_id", "train.txt", "a", "lines 1, 3", id="duplicated split entry"
    ),
    pytest.param(_two_files_for_one_id, "folder", "two_files", "a.jpg", "a", "a.png", id="a.jpg and a.png"),
    pytest.param(
        _label_row_without_image,
        "folder",
        "label_without_image",
        "labels.csv",
        "zz",
        "line 5",
        id="label row without image",
    ),
    pytest.param(
        _image_without_label_row,
        "folder",
        "image_without_label",
        "d.jpg",
        "d",
        "labels.csv",
        id="image without label row",
    ),
    pytest.param(
        _unknown_class_name, "folder", "unknown_class", "labels.csv", None, "did you mean 'car'", id="unknown class"
    ),
    pytest.param(
        _misspelt_class_without_class_list,
        "folder",
        "unknown_class",
        "labels.csv",
        None,
        "misspelling of 'car'",
        id="misspelt class, names from labels",
    ),
    pytest.param(
        _labels_csv_not_utf8, "folder", "csv_encoding", "labels.csv", None, "line 3", id="labels.csv not utf-8"
    ),
    pytest.param(_voc_mask_missing, "voc", "missing_mask", "v2.png", "v2", "segmentation split", id="voc mask missing"),
    pytest.param(
        _voc_unknown_class_in_xml,
        "voc",
        "unknown_class",
        "v1.xml",
        None,
        "did you mean 'person'",
        id="voc unknown class",
    ),
]


def _cfg(make_cfg, kind: str, root, **overrides):
    preset = "folder" if kind == "folder" else "voc"
    return make_cfg(preset, **{"dataset.root": str(root), **overrides})


@pytest.mark.parametrize("defect, kind, problem_kind, file_name, image_id, message_part", CASES)
def test_check_reports_each_defect(tmp_path, make_cfg, defect, kind, problem_kind, file_name, image_id, message_part):
    root = (clean_folder if kind == "folder" else clean_voc)(tmp_path / "set")
    defect(root)
    check = check_data(_cfg(make_cfg, kind, root), ["train"])
    found = [p for p in check.problems if p.kind == problem_kind]
    assert found, check.format()
    problem = found[0]
    assert problem.path.endswith(file_name) and problem.image_id == image_id, check.format()
    assert message_part in problem.message, check.format()
    # the readable list names the file and the kind too
    assert file_name in check.format() and f"[{problem_kind}]" in check.format()
    if problem.image_level:
        assert image_id in check.bad_ids["train"]
    with pytest.raises(DataError, match=problem_kind):
        enforce(_cfg(make_cfg, kind, root), check)


@pytest.mark.parametrize("kind", ["folder", "voc"])
def test_clean_set_has_no_problems(tmp_path, make_cfg, kind):
    root = (clean_folder if kind == "folder" else clean_voc)(tmp_path / "set")
    # a photo stored sideways whose mask is drawn upright (as displayed) is fine
    if kind == "folder":
        Image.fromarray(_noise(4, size=(32, 24))).save(root / "images" / "a.jpg", exif=_exif(6))
    cfg = _cfg(make_cfg, kind, root)
    check = check_data(cfg, ["train", "val"] if kind == "folder" else ["train"])
    assert check.ok, check.format()
    assert "no problems" in check.format()
    assert enforce(cfg, check) == {split: [] for split in check.bad_ids}


def test_skip_mode_drops_exactly_the_bad_images(tmp_path, make_cfg):
    root = clean_folder(tmp_path / "set")
    _truncated_jpeg(root)
    _mask_values_beyond_classes(root)  # a's mask: a is bad twice over
    files.write_label_png(root / "masks" / "b.png", _mask(size=(10, 10)))
    cfg = _cfg(make_cfg, "folder", root)
    with pytest.raises(DataError) as stopped:
        enforce(cfg, check_data(cfg, ["train"]))
    assert "images/a.jpg" in str(stopped.value) and "masks/b.png" in str(stopped.value)
    assert "on_bad_image=skip" in str(stopped.value)

    skipping = _cfg(make_cfg, "folder", root, **{"dataset.on_bad_image": "skip"})
    train = datasets.build(skipping, "train")
    assert train.ids == ["c"] and train.skipped == ["a", "b"]
    check = check_data(skipping, ["train"])
    assert enforce(skipping, check) == {"train": ["a", "b"]}
    write_report(check, tmp_path / "runs" / "data_check.json")
    report = json.loads((tmp_path / "runs" / "data_check.json").read_text())
    assert report["bad_ids"] == {"train": ["a", "b"]}
    assert {(p["kind"], p["image_id"], p["image_level"]) for p in report["problems"]} == {
        ("truncated_image", "a", True),
        ("mask_values", "a", True),
        ("mask_size", "b", True),
    }


def test_skip_mode_still_stops_on_set_level_problems(tmp_path, make_cfg):
    root = clean_folder(tmp_path / "set")
    _truncated_jpeg(root)
    _duplicate_rows(root)
    skipping = _cfg(make_cfg, "folder", root, **{"dataset.on_bad_image": "skip"})
    with pytest.raises(DataError, match="duplicate_id"):
        datasets.build(skipping, "train")


def test_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image = files.read_image(tmp_path / "grey16.png")
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[..., 0].tolist() == [[0, 1, 128, 255]]
    assert (image[..., 0] == image[..., 2]).all()
    # a 16-bit mask whose values fit 0..255 is class ids as they are
    Image.fromarray(np.array([[0, 3, 255]], np.uint16)).save(tmp_path / "mask16.png")
    assert files.read_label_png(tmp_path / "mask16.png").tolist() == [[0, 3, 255]]


@pytest.mark.parametrize(
    "mode, pixel, expected",
    [
        ("LA", (100, 0), (255, 255, 255)),  # fully transparent: white, as on a white page
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("P", 2, (0, 128, 0)),  # palette index 2 of the VOC colours
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_other_modes_become_rgb(mode, pixel, expected):
    img = Image.new(mode, (2, 2), pixel)
    if mode == "P":
        img.putpalette(files.voc_palette().reshape(-1).tolist())
    rgb = files.image_to_rgb(img)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3) and tuple(rgb[0, 0]) == expected


def test_exif_rotated_jpeg_is_used_as_displayed(tmp_path):
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)  # red block at the stored top-left
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=_exif(6), quality=95)
    assert files.image_size(tmp_path / "phone.jpg") == (24, 16)
    shown = files.read_image(tmp_path / "phone.jpg")
    assert shown.shape == (24, 16, 3)
    # orientation 6: shown turned a quarter clockwise, so the block is at the top-right
    assert shown[2, 13, 0] > 200 and shown[2, 2, 0] < 50


def test_confusion_matrix_refuses_a_transposed_map():
    truth = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(2, 3\) vs \(3, 2\)"):
        metrics.ConfusionMatrix(2).update(truth, truth.T)


def test_msrc_from_shared_is_clean(make_cfg):
    needs_shared("data", "msrc_objects")
    check = check_data(make_cfg("msrc"), ["train", "val"])
    assert check.ok, check.format()
    assert check.images == {"train": 325, "val": 88}
