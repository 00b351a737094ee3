"""Segmenting new images with a trained DeepLab checkpoint: no data set, labels or config needed.

    from deeplab.segmenter import Segmenter

    segmenter = Segmenter.from_checkpoint("checkpoints/deeplab/last.pt")  # the GPU when present
    labels = segmenter.segment("photo.jpg")          # (H, W) uint8 class ids; 0 is background
    batch = segmenter.segment([array_a, array_b])    # a list in, a list out, each at its own size
    probs = segmenter.probabilities(array_a)         # (K, H, W) float32 softmax
    segmenter.class_names[labels[0, 0]]              # names by class id: ["background", ...]
    segmenter.palette                                # (K, 3) uint8 colour of each class id

Everything that rebuilds the network (backbone, class count, output stride, class names) is read
from the checkpoint TRAIN_DEEPLAB wrote; the backbone is built without ImageNet weights (nothing is
downloaded) and the trained weights are loaded over it. Checkpoints are pickles: load only your own.

Inference is :func:`deeplab.inference.batch_probabilities` (every image at its own size, padding
cut off, optional multi-scale + flip), with optional autocast (bf16 / fp16) and the same CRF
post-processing as EVAL_DEEPLAB. :meth:`Segmenter.export` writes the network as TorchScript or ONNX.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps

from common import files, runtime
from config import CrfConfig, EvalConfig, auto_memory_format, auto_precision
from deeplab.inference import batch_probabilities, crf_refine
from deeplab.models import DeepLab, build_deeplab

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
EXPORT_FORMATS = ("torchscript", "onnx")
# what a checkpoint's ``extra`` must hold to rebuild the network (train_deeplab's ``describe``)
REBUILD_KEYS = ("backbone", "num_classes", "output_stride")
# largest logit difference an export may show, times max(1, the largest |logit|): float32 alone
# (PyTorch against itself in float64) differs by about 2e-6 of the logits' size, so a fixed
# bound would fail correct exports of networks with large logits
EXPORT_TOLERANCE = 1e-4


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or lacks what rebuilding DeepLab needs (names the file)."""


def eval_crf_defaults() -> tuple[CrfConfig, str, float]:
    """EVAL_DEEPLAB's CRF settings (config.EvalConfig defaults), so both paths refine alike."""
    settings = EvalConfig()
    return settings.crf, settings.crf_unary, settings.crf_confidence


def load_checkpoint(path: str | Path) -> tuple[DeepLab, dict]:
    """The DeepLab a TRAIN_DEEPLAB checkpoint holds (CPU, eval mode) and its description
    (``extra`` plus ``checkpoint`` and ``step``). Raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"DeepLab checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, not a torch file, unpicklable: one message for all
        raise CheckpointError(f"cannot read DeepLab checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a TRAIN_DEEPLAB checkpoint (no 'model' weights in it)")
    extra = state.get("extra") or {}
    missing = [key for key in REBUILD_KEYS if key not in extra]
    if missing:
        raise CheckpointError(
            f"{path} does not describe its network ({', '.join(missing)} missing from its "
            f"'extra'): it was not written by TRAIN_DEEPLAB"
        )
    names = extra.get("class_names")
    if not names:
        raise CheckpointError(
            f"{path} stores no class_names, so its class ids cannot be named: retrain with "
            f"this version of TRAIN_DEEPLAB, or add them (state['extra']['class_names'], "
            f"without background)"
        )
    if len(names) + 1 != extra["num_classes"]:
        raise CheckpointError(
            f"{path}: {len(names)} class_names but {extra['num_classes']} outputs (expected the names plus background)"
        )
    weights = state["model"]
    if weights and all(key.startswith("module.") for key in weights):  # saved from a DDP wrapper
        weights = {key[len("module.") :]: value for key, value in weights.items()}
    try:
        model = build_deeplab(
            backbone=extra["backbone"],
            num_classes=extra["num_classes"],
            output_stride=extra["output_stride"],
            pretrained_backbone=False,
        )
        model.load_state_dict(weights)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its weights do not fit a {extra['backbone']} DeepLab: {err}") from err
    return model.eval(), {**extra, "checkpoint": str(path), "step": state.get("step")}


def as_rgb(image) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an array (H, W, 3), (H, W, 4) or grey (H, W), a PIL image or a
    file path (PIL images and files as displayed: EXIF orientation applied)."""
    if isinstance(image, (str, Path)):
        return files.read_image(image)
    if isinstance(image, Image.Image):
        return files.image_to_rgb(ImageOps.exif_transpose(image))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB arrays, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"images must be (H, W, 3) RGB arrays, got shape {array.shape}")
    return np.ascontiguousarray(array[..., :3])


@dataclass
class ExportResult:
    path: Path  # the exported model
    metadata_path: Path  # its JSON description: input normalisation, size, class names
    max_abs_difference: float  # largest |exported - PyTorch| logit on a random input
    tolerance: float  # what it had to stay within: 1e-4 x max(1, largest |logit|)
    verified: bool  # False when the difference could not be measured (onnxruntime missing)


class LogitsAtInputSize(nn.Module):
    """What export writes: normalised float images (B, 3, H, W) -> logits (B, K, H, W) at the
    input size. The normalisation (RGB / 255, minus ``mean``, over ``std``) stays outside, so the
    exported graph is the network alone; the metadata file gives mean and std."""

    def __init__(self, model: DeepLab) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class Segmenter:
    """A trained DeepLab with its class names and inference options.

    Attributes:
        class_names: names by class id, background first (``class_names[0] == "background"``).
        palette: (K, 3) uint8, the colour of each class id in the written PNGs (the VOC colour map,
            as every label picture of the pipeline uses).
        model, device, precision, scales, flip, crf, batch_size, description (the checkpoint's).
    """

    def __init__(
        self,
        model: DeepLab,
        class_names: Sequence[str],
        *,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        memory_format: str = "auto",
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        crf: bool = False,
        crf_params: CrfConfig | None = None,
        crf_unary: str | None = None,
        crf_confidence: float | None = None,
        batch_size: int = 4,
        description: dict | None = None,
    ) -> None:
        """``class_names``: the C foreground names (background is added as id 0). ``device``: auto
        (CUDA when present), cpu, cuda, cuda:N. ``precision``: fp32, or autocast in bf16 / fp16
        (fp16 on CUDA only), or auto (bf16 where the device computes it natively, else fp32).
        ``memory_format``: channels_last, contiguous, or auto (channels_last on a CPU at fp32).
        ``scales`` / ``flip``: softmax averaged over the image resized by each scale and, with
        ``flip``, mirrored. ``crf``: EVAL_DEEPLAB's CRF post-processing (its
        defaults unless ``crf_params`` / ``crf_unary`` / ``crf_confidence`` are given).
        ``batch_size``: images of one size per forward pass (a result never depends on the other
        images of a call)."""
        self.device = device if isinstance(device, torch.device) else runtime.select_device(device)
        if precision == "auto":
            precision = auto_precision(str(self.device))
        if precision not in runtime.PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(runtime.PRECISIONS)}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device (this one is {self.device}); use bf16 or fp32")
        scales = tuple(float(s) for s in scales)
        if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
            raise ValueError(f"scales {list(scales)}: expected one or more positive numbers")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size {batch_size}: expected at least 1")
        if len(class_names) + 1 != model.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a DeepLab with {model.num_classes} outputs "
                f"(expected the names without background)"
            )
        default_params, default_unary, default_confidence = eval_crf_defaults()
        self.crf_params = crf_params or default_params
        self.crf_unary = crf_unary or default_unary
        self.crf_confidence = default_confidence if crf_confidence is None else float(crf_confidence)
        if self.crf_unary not in ("labels", "softmax"):
            raise ValueError(f"crf_unary {self.crf_unary!r}: expected labels or softmax")
        if memory_format == "auto":
            memory_format = auto_memory_format(str(self.device), precision)
        self.model = runtime.to_memory_format(model.to(self.device), memory_format).eval()
        self.class_names = ["background", *class_names]
        self.palette = files.voc_palette()[: len(self.class_names)].copy()
        self.precision, self.scales, self.flip, self.crf = precision, scales, bool(flip), bool(crf)
        self.batch_size = int(batch_size)
        self.description = dict(description or {})

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", precision: str = "fp32", **options
    ) -> Segmenter:
        """The network of a TRAIN_DEEPLAB checkpoint (``best.pt`` or ``last.pt``) with its class
        names; ``options`` as in the constructor. Raises :class:`CheckpointError` naming the file."""
        model, description = load_checkpoint(path)
        return cls(
            model, description["class_names"], device=device, precision=precision, description=description, **options
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---- inference
    def _run(self, images: list[np.ndarray], want_labels: bool) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """(labels, probabilities) of each image in input order (one of the two, by ``want_labels``)."""
        results: list = [None] * len(images)
        label_type = np.uint8 if self.num_classes <= 256 else np.int32
        # only images of one size share a pass: padding to a common size would change a prediction
        # (the ASPP's image pooling averages the padding too), so a result never depends on the
        # other images of the call
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(index)
        groups = [
            members[start : start + self.batch_size]
            for _, members in sorted(by_size.items())
            for start in range(0, len(members), self.batch_size)
        ]
        for group in groups:
            with runtime.autocast(self.device, self.precision):
                probabilities = batch_probabilities(self.model, [images[i] for i in group], self.scales, self.flip)
            for index, probs in zip(group, probabilities):
                probs = probs.float()
                if not want_labels:
                    results[index] = (None, probs.cpu().numpy())
                    continue
                labels = probs.argmax(0).cpu().numpy().astype(label_type)
                if self.crf:
                    unaries = probs.cpu().numpy() if self.crf_unary == "softmax" else None
                    labels = crf_refine(
                        images[index], labels, self.num_classes, self.crf_confidence, self.crf_params, unaries
                    ).astype(label_type)
                results[index] = (labels, None)
        return results

    @staticmethod
    def _inputs(image_or_images) -> tuple[list[np.ndarray], bool]:
        single = not isinstance(image_or_images, (list, tuple))
        items = [image_or_images] if single else list(image_or_images)
        return [as_rgb(item) for item in items], single

    def segment(self, image_or_images):
        """Class ids (H, W) of one image, or a list of them for a list of images, each at its own
        size (uint8; 0 = background, ``class_names`` gives the rest). An image is an RGB uint8 array,
        a PIL image or a file path (EXIF orientation applied)."""
        images, single = self._inputs(image_or_images)
        labels = [labels for labels, _ in self._run(images, want_labels=True)]
        return labels[0] if single else labels

    def probabilities(self, image_or_images):
        """The network's softmax (K, H, W) float32 of one image or a list of them (averaged over the
        scales and flip; before any CRF)."""
        images, single = self._inputs(image_or_images)
        probabilities = [probs for _, probs in self._run(images, want_labels=False)]
        return probabilities[0] if single else probabilities

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """RGB picture (H, W, 3) of a class-id map in the class colours."""
        return self.palette[np.asarray(labels)]

    # ---- export
    def export(self, path: str | Path, export_format: str, size: tuple[int, int] = (512, 512)) -> ExportResult:
        """Write the network (fp32, CPU) as TorchScript (``torch.jit.trace``) or ONNX for input
        (1, 3, H, W) = ``size``, and a ``<path>.json`` that says how to feed it. The exported model
        is run on a random input against PyTorch; the largest logit difference is returned (ONNX is
        checked with onnxruntime when it is installed). Raises ValueError when it exceeds 1e-4
        times the largest logit (1e-4 for logits within +-1; see ``EXPORT_TOLERANCE``)."""
        if export_format not in EXPORT_FORMATS:
            raise ValueError(f"export format {export_format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
        height, width = (int(v) for v in size)
        if height < 16 or width < 16:
            raise ValueError(f"export size {height}x{width}: expected both sides at least 16")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # contiguous weights: the exported file does not depend on this machine's memory format
        wrapper = LogitsAtInputSize(runtime.to_memory_format(copy.deepcopy(self.model).float().cpu(), "contiguous"))
        wrapper.eval()
        generator = torch.Generator().manual_seed(0)
        example = torch.randn(1, 3, height, width, generator=generator)
        check = torch.randn(1, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = wrapper(check).numpy()
        metadata = self.export_metadata(export_format, (height, width))
        with warnings.catch_warnings():
            # torch 2.14 flags jit.trace and the TorchScript-based ONNX exporter as deprecated on
            # every call; both still work, and these warnings would bury the result's own message
            for pattern in (".*deprecated.*", ".*legacy TorchScript-based ONNX.*", ".*will be removed.*"):
                warnings.filterwarnings("ignore", message=pattern)
            if export_format == "torchscript":
                with torch.no_grad():
                    traced = torch.jit.trace(wrapper, example, check_trace=False)
                traced.save(str(path), _extra_files={"deeplab.json": json.dumps(metadata)})
                with torch.no_grad():
                    actual = torch.jit.load(str(path), map_location="cpu")(check).numpy()
            else:
                export_onnx(wrapper, example, path)
                actual = run_onnx(path, check.numpy())
        files.write_text(metadata_path(path), json.dumps(metadata, indent=1) + "\n")
        tolerance = EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max()))
        if actual is None:
            return ExportResult(path, metadata_path(path), float("nan"), tolerance, verified=False)
        difference = float(np.abs(actual - expected).max())
        if not difference <= tolerance:
            raise ValueError(
                f"exported {export_format} model {path} differs from PyTorch by {difference:.3g} "
                f"(more than {tolerance:.3g}: 1e-4 x the largest logit, at least 1e-4)"
            )
        return ExportResult(path, metadata_path(path), difference, tolerance, verified=True)

    def export_metadata(self, export_format: str, size: tuple[int, int]) -> dict:
        return {
            "format": export_format,
            "input": "images",
            "output": "logits",
            "input_shape": [1, 3, *size],
            "output_shape": [1, self.num_classes, *size],
            "normalisation": "float RGB / 255, minus mean, divided by std, per channel",
            "mean": list(self.model.mean),
            "std": list(self.model.std),
            "class_names": self.class_names,
            "palette": self.palette.tolist(),
            "backbone": self.model.name,
            "output_stride": self.model.output_stride,
            "checkpoint": self.description.get("checkpoint"),
            "step": self.description.get("step"),
        }


def metadata_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``torch.onnx.export`` of ``module`` for inputs shaped like ``example`` (batch size free)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; a clear message beats its ImportError)
    except ImportError as err:
        raise ImportError("ONNX export needs the onnx package: pip install -r requirements-export.txt") from err
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray | None:
    """Logits of an exported ONNX model under onnxruntime (CPU); None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images.astype(np.float32)})[0]
