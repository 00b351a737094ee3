"""PASCAL VOC 2012 folder layout (any VOC-layout set: VOC itself, MSRC objects, the synthetic set).

    JPEGImages/<id>.jpg
    Annotations/<id>.xml                  optional; image labels from its <object><name> tags
    SegmentationClass/<id>.png            optional palette PNG (SegmentationClassAug as fallback)
    ImageSets/Segmentation/<split>.txt    ids of a split (ImageSets/Main as fallback)
    class_names.txt                       optional, one class per line (else config or VOC's 20)

Loading lists ids repeated in the split list and ids with two image files in ``problems``; the
data check (``datasets.check``) examines the files themselves.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from common import files
from datasets.base import FolderOfImages, list_images, read_id_lines, two_file_problems, unique_ids

# the order decides which file an id uses when it has two (a problem the data check reports)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp", ".tif", ".tiff")


def xml_object_names(path: Path) -> list[str]:
    """The <object><name> tags of a VOC annotation file, stripped."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise OSError(f"cannot read annotation {path}: {err}") from err
    return [(obj.findtext("name") or "").strip() for obj in root.iter("object")]


def names_to_vector(names, class_names: list[str], source: Path, unknown: set) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    vector = np.zeros(len(class_names), dtype=np.float32)
    for name in names:
        if name in index:
            vector[index[name]] = 1.0
        elif name and name not in unknown:
            unknown.add(name)
            warnings.warn(f"{source}: class {name!r} is not in the configured class names; skipped", stacklevel=2)
    return vector


def read_class_names(root: Path) -> list[str] | None:
    path = root / "class_names.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if names and names[0] in ("background", "_background_"):
        names = names[1:]
    return names


class VOCImageSet(FolderOfImages):
    def __init__(self, root: Path, split: str, class_names: list[str], id_list: Path | None = None):
        self.root = Path(root)
        # ids of ImageSets/Segmentation lists promise a mask each; Main lists and extra lists
        # (SBD's train_aug.txt) do not
        from_segmentation_list = id_list is None
        if id_list is None:
            id_list = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not id_list.is_file():
                id_list = self.root / "ImageSets" / "Main" / f"{split}.txt"
                from_segmentation_list = False
        if not Path(id_list).is_file():
            raise FileNotFoundError(f"split {split!r}: no id list at {id_list}")
        ids, duplicates = unique_ids(read_id_lines(id_list), Path(id_list), split)
        super().__init__(split, class_names, ids)
        self._unknown: set[str] = set()
        self._labels: dict[str, np.ndarray] = {}
        mask_dirs = [self.root / "SegmentationClass", self.root / "SegmentationClassAug"]
        self._mask_dirs = [d for d in mask_dirs if d.is_dir()]
        self._masks_promised = from_segmentation_list and bool(self._mask_dirs)
        self.image_folder = self.root / "JPEGImages"
        self._images = list_images(self.image_folder, IMAGE_SUFFIXES)
        self.problems += duplicates + two_file_problems(self._images, self.ids, split)

    def mask_path(self, image_id: str) -> Path | None:
        return self._mask_path(image_id)

    def mask_expected(self, image_id: str) -> bool:
        return self._masks_promised

    def annotation_path(self, image_id: str) -> Path | None:
        """Annotations/<id>.xml where it exists (the image's labels come from its object names)."""
        path = self.root / "Annotations" / f"{image_id}.xml"
        return path if path.is_file() else None

    def _mask_path(self, image_id: str) -> Path | None:
        for folder in self._mask_dirs:
            path = folder / f"{image_id}.png"
            if path.is_file():
                return path
        return None

    def mask(self, image_id: str) -> np.ndarray | None:
        path = self._mask_path(image_id)
        return None if path is None else files.read_label_png(path)

    def has_mask(self, image_id: str) -> bool:
        return self._mask_path(image_id) is not None

    def labels(self, image_id: str) -> np.ndarray:
        if image_id not in self._labels:
            xml = self.root / "Annotations" / f"{image_id}.xml"
            if xml.is_file():
                vector = names_to_vector(xml_object_names(xml), self.class_names, xml, self._unknown)
            else:
                mask = self.mask(image_id)
                if mask is None:
                    raise FileNotFoundError(
                        f"id {image_id!r}: neither {xml} nor a SegmentationClass mask gives its labels"
                    )
                vector = self.labels_from_mask(mask)
            self._labels[image_id] = vector
        return self._labels[image_id].copy()
