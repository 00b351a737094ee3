"""Your own images.

    images/<id>.<jpg|png>
    labels.csv            "id,names": class names separated by spaces, ';' or further columns
    annotations/<id>.xml  alternative label source (dataset.label_source = xml): VOC-style
                          bounding-box XMLs, e.g. the City of Amsterdam garbage set
    masks/<id>.png        optional ground truth (palette or grey PNG of class ids, or RGB in VOC colours)
    <split>.txt           optional id list of a split; without it every split is every image
    class_names.txt       optional; else the config's class_names, else every name seen, sorted

Loading keeps going past inconsistencies and lists them in ``problems`` (see ``datasets.check``):
a labels.csv line that is not UTF-8, an id on two rows, two image files for one id, label rows
without an image, images without a label row, class names that are not known (or, with the names
taken from the labels, that look like a misspelling of another).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import files
from datasets.base import (
    FolderOfImages,
    Problem,
    list_images,
    nearest_class_name,
    read_id_lines,
    suspicious_names,
    two_file_problems,
    unique_ids,
)
from datasets.voc import IMAGE_SUFFIXES, names_to_vector, read_class_names, xml_object_names

HEADER_WORDS = ("id", "image", "image_id", "filename")
# encoding errors listed one by one before the rest are summed up in one problem
MAX_ENCODING_LINES = 10


@dataclass
class LabelRows:
    """What a label source holds: class names per id, where each id's names come from (file and
    line), and what was wrong with it."""

    names: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, tuple[Path, int | None]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _decode_lines(raw: bytes, path: Path) -> tuple[str, list[Problem]]:
    """labels.csv as text; every line that is not UTF-8 is a problem naming it (and read as
    Windows-1252 meanwhile, so the rest of the file still loads)."""
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as Excel writes "CSV UTF-8"
        raw = raw[3:]
    text_lines, problems, bad_lines = [], [], []
    for line_no, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            text_lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            text = line.decode("cp1252", errors="replace")
            text_lines.append(text)
            bad_lines.append(line_no)
            if len(bad_lines) <= MAX_ENCODING_LINES:
                problems.append(
                    Problem(
                        "csv_encoding",
                        str(path),
                        f"line {line_no} is not UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}; "
                        f"as Windows-1252 it reads {text.strip()!r}): save labels.csv as UTF-8",
                    )
                )
    if len(bad_lines) > MAX_ENCODING_LINES:
        problems.append(
            Problem(
                "csv_encoding",
                str(path),
                f"{len(bad_lines) - MAX_ENCODING_LINES} more lines are not UTF-8 "
                f"(the last: line {bad_lines[-1]}): save labels.csv as UTF-8",
            )
        )
    return "".join(text_lines), problems


def read_labels_csv(path: Path) -> LabelRows:
    """Image id -> class names from labels.csv (the id is the first column's file stem, so
    'a.png' and 'a' are the same id). An id on two rows keeps its first row and is a problem."""
    rows = LabelRows()
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise OSError(f"cannot read {path}: {err}") from err
    text, rows.problems = _decode_lines(raw, Path(path))
    lines: dict[str, list[int]] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    for row in reader:
        line_no = reader.line_num
        if not row or not row[0].strip() or row[0].startswith("#"):
            continue
        if line_no == 1 and row[0].strip().lower() in HEADER_WORDS:
            continue
        image_id = Path(row[0].strip()).stem
        names = [n for cell in row[1:] for n in re.split(r"[;\s|]+", cell.strip()) if n]
        lines.setdefault(image_id, []).append(line_no)
        if image_id in rows.names:
            continue
        rows.names[image_id] = names
        rows.sources[image_id] = (Path(path), line_no)
    for image_id, at in lines.items():
        if len(at) > 1:
            rows.problems.append(
                Problem(
                    "duplicate_id",
                    str(path),
                    f"id {image_id!r} is on {len(at)} rows (lines {', '.join(map(str, at))}); "
                    f"keep one row per image with all its class names",
                    image_id,
                )
            )
    return rows


def read_label_xmls(folder: Path) -> LabelRows:
    """Image id -> <object><name>s of each annotations/<id>.xml; an unreadable file is a problem."""
    rows = LabelRows()
    for path in sorted(folder.glob("*.xml")):
        try:
            rows.names[path.stem] = xml_object_names(path)
        except OSError as err:
            rows.problems.append(Problem("unreadable_labels", str(path), str(err), path.stem))
            rows.names[path.stem] = []
        rows.sources[path.stem] = (path, None)
    return rows


def _rows(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _where(source: tuple[Path, int | None]) -> str:
    path, line_no = source
    return f"{path.name} line {line_no}" if line_no is not None else path.name


def class_name_problems(rows: LabelRows, class_names: list[str], given: bool) -> list[Problem]:
    """Class names in the labels that are not known (``given``: the class list came from the config
    or class_names.txt), with the nearest known name; without a given list, names that look like
    a misspelling of another name in the labels ('Car' beside 'car'), which would become a class."""
    uses: Counter = Counter(n for names in rows.names.values() for n in names if n)
    first_use = {}
    for image_id, names in rows.names.items():
        for name in names:
            first_use.setdefault(name, rows.sources[image_id])
    problems = []
    if given:
        for name in sorted(set(uses) - set(class_names)):
            nearest = nearest_class_name(name, class_names)
            hint = f"did you mean {nearest!r}?" if nearest else f"known: {', '.join(class_names)}"
            problems.append(
                Problem(
                    "unknown_class",
                    str(first_use[name][0]),
                    f"class {name!r} ({_rows(uses[name])}, first at {_where(first_use[name])}) is not "
                    f"among the class names; {hint}",
                )
            )
    else:
        for name, other in sorted(suspicious_names(uses).items()):
            problems.append(
                Problem(
                    "unknown_class",
                    str(first_use[name][0]),
                    f"class {name!r} ({_rows(uses[name])}, first at {_where(first_use[name])}) looks like "
                    f"a misspelling of {other!r} ({_rows(uses[other])}) and would become a class of its "
                    f"own; did you mean {other!r}? (if both are real classes, list the class names in "
                    f"class_names.txt)",
                )
            )
    return problems


class FolderImageSet(FolderOfImages):
    def __init__(self, root: Path, split: str, class_names: list[str] | None, label_source: str):
        self.root = Path(root)
        if label_source == "csv":
            csv_path = self.root / "labels.csv"
            if not csv_path.is_file():
                raise FileNotFoundError(f"dataset.label_source = csv but {csv_path} does not exist")
            rows = read_labels_csv(csv_path)
            label_file = csv_path.name
        else:
            xml_dir = next((d for d in (self.root / "annotations", self.root / "Annotations") if d.is_dir()), None)
            if xml_dir is None:
                raise FileNotFoundError(f"dataset.label_source = xml but {self.root}/annotations is missing")
            rows = read_label_xmls(xml_dir)
            label_file = f"{xml_dir.name}/<id>.xml"
        self._names = rows.names
        given = class_names or read_class_names(self.root)
        class_names = given or sorted({n for names in rows.names.values() for n in names if n})
        self.image_folder = self.root / "images"
        self._images = list_images(self.image_folder, IMAGE_SUFFIXES)
        id_list = self.root / f"{split}.txt"
        if id_list.is_file():
            ids, duplicates = unique_ids(read_id_lines(id_list), id_list, split)
        else:
            ids, duplicates = sorted(self._images), []
        super().__init__(split, class_names, ids)
        self._unknown: set[str] = set()
        self.problems += rows.problems + duplicates + two_file_problems(self._images, ids, split)
        self.problems += class_name_problems(rows, class_names, bool(given))
        for image_id in ids:
            if image_id not in rows.names and image_id in self._images:
                self.problems.append(
                    Problem(
                        "image_without_label",
                        str(self._images[image_id][0]),
                        f"image {image_id!r} has no entry in {label_file}; add it (an empty class list "
                        f"means no class of interest)",
                        image_id,
                        split,
                    )
                )
        for image_id, source in rows.sources.items():
            if image_id not in self._images:
                others = sorted(p.name for p in (self.root / "images").glob(f"{image_id}.*"))
                hint = f" ({', '.join(others)} is not a readable format: convert it to JPEG or PNG)" if others else ""
                self.problems.append(
                    Problem(
                        "label_without_image",
                        str(source[0]),
                        f"{_where(source)}: id {image_id!r} has no image in images/{hint}",
                        image_id,
                    )
                )

    def labels(self, image_id: str) -> np.ndarray:
        if image_id not in self._names:
            raise KeyError(f"image {image_id!r} has no labels in {self.root} (run the data check)")
        return names_to_vector(self._names[image_id], self.class_names, self.root, self._unknown)

    def mask_path(self, image_id: str) -> Path | None:
        path = self.root / "masks" / f"{image_id}.png"
        return path if path.is_file() else None

    def mask(self, image_id: str) -> np.ndarray | None:
        path = self.mask_path(image_id)
        return files.read_label_png(path) if path is not None else None
