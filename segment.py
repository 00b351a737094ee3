"""Segment new images with the trained DeepLab: no labels, data set layout or config needed.

    python segment.py PATH... --out DIR [options]

PATH: image files and folders (searched recursively for .jpg .jpeg .png .bmp, any case). Class
names and the network come from the checkpoint (default: the one EVAL_DEEPLAB scores,
checkpoints/deeplab/last.pt unless eval.checkpoint says best, else the other one). Photos are
turned upright by their EXIF orientation. The GPU is used when present.

Writes, under DIR, each image's name relative to the folder given (sub-folders kept, so files of
the same name in different folders stay apart):
    DIR/<name>.png            class ids as a palette PNG (VOC colours; 0 = background)
    DIR/overlays/<name>.jpg   the image | its prediction in the class colours, with a legend
    DIR/class_shares.csv      image, then each class's share of the image's pixels (rows sum to 1)
An unreadable image is reported and skipped. Exit status: 0 done, 1 nothing could be segmented,
2 a bad option, no images, or a missing or unusable checkpoint.

Options:
    --checkpoint FILE          another checkpoint (TRAIN_DEEPLAB's best.pt / last.pt)
    --scales 1.0,0.75          average the softmax over these image scales
    --flip                     ... and over the mirrored images
    --crf                      EVAL_DEEPLAB's dense-CRF post-processing (config.EvalConfig defaults)
    --device auto|cpu|cuda     auto = CUDA when present
    --batch-size N             images per forward pass (padded to a common size)
    --precision auto|fp32|bf16|fp16 autocast (fp16 on CUDA only); auto (the default) is bf16 where
                               the device computes it natively, else fp32
    --export torchscript|onnx  also write DIR/deeplab.torchscript.pt or DIR/deeplab.onnx (repeatable;
                               PATH may then be left out), for normalised float input (1, 3, H, W)
                               returning logits (1, K, H, W); DIR/<model>.json gives mean, std and
                               class names. The export is checked against PyTorch: logits within
                               1e-4 x max(1, the largest logit) on a random input.
    --export-size H,W          the input size the export is traced at (default 512,512)

Examples:
    python segment.py photos/ --out segmented
    python segment.py a.jpg b.png --out out --scales 1.0,0.75,1.25 --flip --crf --precision bf16
    python segment.py --export onnx --export-size 480,640 --out exported

Python: ``from deeplab.segmenter import Segmenter``; ``Segmenter.from_checkpoint(path).segment(image)``
returns class-id arrays (see deeplab/segmenter.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

EXPORT_NAMES = {"torchscript": "deeplab.torchscript.pt", "onnx": "deeplab.onnx"}


class UsageError(Exception):
    """A bad option, no images, or no usable checkpoint: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of the usage block
        raise UsageError(f"{message} (python segment.py --help)")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive numbers, e.g. 1.0,0.75")
    return values


def _size(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        height, width = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected H,W, e.g. 512,512") from None
    if height < 16 or width < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be at least 16")
    return height, width


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(
        prog="segment.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python segment.py PATH... --out DIR [options]",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="where predictions go")
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="DeepLab checkpoint (default: the one EVAL_DEEPLAB scores, checkpoints/deeplab/last.pt)",
    )
    parser.add_argument(
        "--experiment",
        default="",
        metavar="NAME",
        help="take the default checkpoint from experiments/NAME/ (runtime.experiment)",
    )
    parser.add_argument("--scales", type=_float_list, default=[1.0], help="e.g. 1.0,0.75 (default 1.0)")
    parser.add_argument("--flip", action="store_true", help="average with the mirrored image")
    parser.add_argument("--crf", action="store_true", help="dense-CRF post-processing")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="images per forward pass")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument(
        "--export",
        action="append",
        choices=tuple(EXPORT_NAMES),
        default=[],
        help="also write the network as TorchScript or ONNX (repeatable)",
    )
    parser.add_argument(
        "--export-size",
        type=_size,
        default=(512, 512),
        metavar="H,W",
        help="input size of the export (default 512,512)",
    )
    return parser.parse_args(argv)


def default_checkpoint(experiment: str = "") -> Path:
    """The checkpoint EVAL_DEEPLAB scores (eval.checkpoint: last.pt by default; best.pt was picked
    on the val masks), else the other one, where the pipeline's config puts them (under
    experiments/<experiment>/ with an experiment's name)."""
    import config
    from common.layout import Layout
    from common.stages import BY_NAME

    cfg = config.build_config("demo", [f"runtime.experiment={experiment}"] if experiment else [])
    layout = Layout(cfg)
    path = layout.handed_on(BY_NAME["train_deeplab"], cfg)
    if path is not None:
        return path
    raise UsageError(
        f"no trained DeepLab in {layout.checkpoint('deeplab').parent} (best.pt or last.pt): "
        f"train one (python main.py --stages train_deeplab) or pass --checkpoint FILE"
    )


class Found(NamedTuple):
    path: Path  # the file
    name: str  # its outputs' name without suffix, relative to the common folder of the arguments
    relative: str  # the file's own name relative to that folder (the CSV's image column)


def find_images(paths: list[str], out: Path) -> list[Found]:
    """Every image under ``paths``, sorted by output name.

    Names are relative to the common folder of the arguments (a folder argument: itself), so
    files of one name in different folders stay apart; where two files still share a name (x.jpg
    and x.png side by side) both keep their suffix (x.jpg, x.png). Files under ``out`` are left
    out, so a rerun does not segment its own overlays."""
    from deeplab.segmenter import IMAGE_SUFFIXES

    out = out.resolve()
    found: dict[Path, None] = {}
    roots = []
    for text in paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise UsageError(f"no such file or folder: {text}")
        path = path.resolve()
        if path.is_dir():
            roots.append(path)
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not Path(dirpath, d).resolve() == out)
                for filename in filenames:
                    if Path(filename).suffix.lower() in IMAGE_SUFFIXES:
                        found[Path(dirpath, filename)] = None
        else:
            roots.append(path.parent)
            found[path] = None  # named explicitly: tried whatever its suffix
    if not found:
        return []
    base = Path(os.path.commonpath([str(r) for r in roots]))
    relative = {image: image.relative_to(base) for image in found}
    stems: dict[str, int] = {}
    for rel in relative.values():
        stem = rel.with_suffix("").as_posix()
        stems[stem] = stems.get(stem, 0) + 1
    named = [
        Found(
            image,
            rel.with_suffix("").as_posix() if stems[rel.with_suffix("").as_posix()] == 1 else rel.as_posix(),
            rel.as_posix(),
        )
        for image, rel in relative.items()
    ]
    return sorted(named, key=lambda item: item.name)


def overlay(image: np.ndarray, labels: np.ndarray, segmenter) -> np.ndarray:
    """The image | its prediction in the class colours, and under them a legend of the classes
    present (colour swatch and name), its lettering scaled to the picture's width."""
    from PIL import Image, ImageDraw, ImageFont

    picture = np.concatenate([image, segmenter.colorize(labels)], axis=1)
    text_size = max(11, picture.shape[1] // 100)
    try:
        font = ImageFont.load_default(size=text_size)
    except (TypeError, OSError):  # a Pillow without FreeType has only its small bitmap font
        font = ImageFont.load_default()
    row = text_size + 8
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries, x, line = [], 4, 0
    for class_id in (int(c) for c in np.unique(labels)):
        name = segmenter.class_names[class_id] if class_id < segmenter.num_classes else str(class_id)
        width = row + int(probe.textlength(name, font=font)) + row // 2
        if x + width > picture.shape[1] and x > 4:
            x, line = 4, line + 1
        entries.append((x, line, class_id, name))
        x += width
    legend = Image.new("RGB", (picture.shape[1], (line + 1) * row + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for x, line, class_id, name in entries:
        top = 2 + line * row
        colour = tuple(int(v) for v in segmenter.palette[class_id % len(segmenter.palette)])
        draw.rectangle([x, top + 2, x + row - 6, top + row - 4], fill=colour, outline=(0, 0, 0))
        draw.text((x + row, top + 2), name, fill=(0, 0, 0), font=font)
    return np.concatenate([picture, np.asarray(legend)], axis=0)


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class id's share of the pixels (sums to 1)."""
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / max(1, labels.size)


def write_label_png(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
    """Class ids as a palette PNG: ``palette`` for the ids it covers, the VOC colours after."""
    from PIL import Image

    from common import files

    colours = files.voc_palette()
    colours[: len(palette)] = palette
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(colours.reshape(-1).tolist())
    files.atomic_write(path, lambda handle: img.save(handle, format="PNG"))


def segment_files(segmenter, images: list[Found], out: Path, progress) -> tuple[list, list]:
    """Segment ``images`` into ``out``; returns (CSV rows (relative name, shares) in name order,
    (file, reason) of each skipped one)."""
    from common import files
    from deeplab.inference import padded_batches

    rows, skipped = [], []
    sizes = {}
    for found in images:
        try:
            sizes[found] = files.image_size(found.path)
        except OSError as err:
            skipped.append((found.path, str(err)))
            progress.update(1)
    for group in padded_batches(list(sizes), sizes, segmenter.batch_size):
        loaded = []
        for found in group:
            try:
                loaded.append((found, files.read_image(found.path)))
            except OSError as err:  # a header that reads but a body that does not (truncated file)
                skipped.append((found.path, str(err)))
                progress.update(1)
        if not loaded:
            continue
        predictions = segmenter.segment([image for _, image in loaded])
        for (found, image), labels in zip(loaded, predictions):
            write_label_png(out / f"{found.name}.png", labels, segmenter.palette)
            files.write_rgb(out / "overlays" / f"{found.name}.jpg", overlay(image, labels, segmenter))
            rows.append((found.relative, class_shares(labels, segmenter.num_classes)))
            progress.update(1)
    for _path, reason in skipped:
        progress.write(f"skipped: {reason}")
    return sorted(rows, key=lambda row: row[0]), skipped


def shares_csv(rows: list, class_names: list[str]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", *class_names])
    for name, shares in rows:
        writer.writerow([name, *(f"{share:.6f}" for share in shares)])
    return text.getvalue()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        out = Path(args.out).expanduser()
        if not args.paths and not args.export:
            raise UsageError("no images given: pass image files or folders (or --export)")
        images = find_images(args.paths, out)
        if args.paths and not images:
            raise UsageError(f"no images (.jpg .jpeg .png .bmp) found in {', '.join(args.paths)}")
        checkpoint = Path(args.checkpoint).expanduser() if args.checkpoint else default_checkpoint(args.experiment)
        if not checkpoint.is_file():
            raise UsageError(f"DeepLab checkpoint {checkpoint} does not exist")
        # imported after the cheap checks: importing torch takes seconds
        from deeplab.segmenter import CheckpointError, Segmenter

        try:
            segmenter = Segmenter.from_checkpoint(
                checkpoint,
                device=args.device,
                precision=args.precision,
                scales=args.scales,
                flip=args.flip,
                crf=args.crf,
                batch_size=args.batch_size,
            )
        except (CheckpointError, ValueError, RuntimeError) as err:  # RuntimeError: cuda without a GPU
            raise UsageError(str(err)) from err
    except UsageError as err:
        print(f"segment.py: error: {err}", file=sys.stderr)
        return 2

    print(
        f"{checkpoint}: {segmenter.model.name} DeepLab, classes {', '.join(segmenter.class_names[1:])}; "
        f"{segmenter.device}, {segmenter.precision}",
        flush=True,
    )
    for export_format in args.export:
        try:
            result = segmenter.export(out / EXPORT_NAMES[export_format], export_format, args.export_size)
        except ImportError as err:  # onnx missing: an option this installation cannot serve
            print(f"segment.py: error: {err}", file=sys.stderr)
            return 2
        except ValueError as err:  # the exported model does not reproduce PyTorch's logits
            print(f"segment.py: error: {err}", file=sys.stderr)
            return 1
        check = (
            f"matches PyTorch within {result.max_abs_difference:.2g} (allowed {result.tolerance:.2g})"
            if result.verified
            else "not checked: onnxruntime is not installed (pip install -r requirements-export.txt)"
        )
        print(
            f"exported {result.path} ({export_format}, input 1x3x{args.export_size[0]}x{args.export_size[1]}; "
            f"{check}); how to feed it: {result.metadata_path}",
            flush=True,
        )
    if not images:
        return 0

    from tqdm import tqdm

    from common import files

    progress = tqdm(total=len(images), desc="segment", unit="img")
    try:
        rows, skipped = segment_files(segmenter, images, out, progress)
    finally:
        progress.close()
    if rows:
        files.write_text(out / "class_shares.csv", shares_csv(rows, segmenter.class_names))
    print(
        f"segmented {len(rows)} of {len(images)} images into {out}"
        + (f"; {len(skipped)} unreadable, skipped: " + ", ".join(str(p) for p, _ in skipped) if skipped else "")
    )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
