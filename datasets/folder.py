"""Your own images.

    images/<id>.<jpg|png>
    labels.csv            "id,names": class names separated by spaces, ';' or further columns
    annotations/<id>.xml  alternative label source (dataset.label_source = xml): VOC-style
                          bounding-box XMLs, e.g. the City of Amsterdam garbage set
    masks/<id>.png        optional ground truth (palette or grey PNG of class ids)
    <split>.txt           optional id list of a split; without it every split is every image
    class_names.txt       optional; else the config's class_names, else every name seen, sorted
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from common import files
from datasets.base import ImageSet, read_id_list
from datasets.voc import IMAGE_SUFFIXES, find_image, names_to_vector, read_class_names, xml_object_names


def read_labels_csv(path: Path) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or not row[0].strip() or row[0].startswith("#"):
                    continue
                if line_no == 1 and row[0].strip().lower() in ("id", "image", "image_id", "filename"):
                    continue
                image_id = Path(row[0].strip()).stem
                names = [n for cell in row[1:] for n in re.split(r"[;\s|]+", cell.strip()) if n]
                labels[image_id] = names
    except OSError as err:
        raise OSError(f"cannot read {path}: {err}") from err
    return labels


class FolderImageSet(ImageSet):
    def __init__(self, root: Path, split: str, class_names: list[str] | None, label_source: str):
        self.root = Path(root)
        if label_source == "csv":
            csv_path = self.root / "labels.csv"
            if not csv_path.is_file():
                raise FileNotFoundError(f"dataset.label_source = csv but {csv_path} does not exist")
            self._names = read_labels_csv(csv_path)
        else:
            xml_dir = next((d for d in (self.root / "annotations", self.root / "Annotations")
                            if d.is_dir()), None)
            if xml_dir is None:
                raise FileNotFoundError(f"dataset.label_source = xml but {self.root}/annotations is missing")
            self._names = {p.stem: xml_object_names(p) for p in sorted(xml_dir.glob("*.xml"))}
        class_names = class_names or read_class_names(self.root) or sorted(
            {n for names in self._names.values() for n in names})
        id_list = self.root / f"{split}.txt"
        if id_list.is_file():
            ids = read_id_list(id_list)
        else:
            images = self.root / "images"
            ids = sorted(p.stem for p in images.iterdir() if p.suffix in IMAGE_SUFFIXES) \
                if images.is_dir() else []
        missing = [i for i in ids if i not in self._names]
        if missing:
            raise ValueError(f"{self.root}: {len(missing)} images have no labels "
                             f"(first: {missing[:3]}); add them to the label source")
        super().__init__(split, class_names, ids)
        self._unknown: set[str] = set()

    def image(self, image_id: str) -> np.ndarray:
        return files.read_image(find_image(self.root / "images", image_id))

    def image_size(self, image_id: str) -> tuple[int, int]:
        return files.image_size(find_image(self.root / "images", image_id))

    def labels(self, image_id: str) -> np.ndarray:
        return names_to_vector(self._names[image_id], self.class_names, self.root, self._unknown)

    def mask(self, image_id: str) -> np.ndarray | None:
        path = self.root / "masks" / f"{image_id}.png"
        return files.read_label_png(path) if path.is_file() else None
