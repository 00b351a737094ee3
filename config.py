"""Every setting of the pipeline, typed and grouped per stage.

Edit the defaults here, pick a preset (``python main.py --preset voc``) or override single keys
(``--set classifier.steps=200``). The whole configuration is validated by :func:`validate` before any
stage starts; an unknown key, a wrong type, a value out of range or a missing path is reported in one
error that names the setting.

Class ids: masks and pseudo labels hold 0 for background, 1..C for the classes (in the order of
``Config.class_names``) and 255 for ignore. Image-level label vectors have C entries, entry c-1 for
class id c.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, out of range, or names a missing path."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
@dataclass
class PathsConfig:
    """Where things live. Relative paths are relative to ``project_root``."""

    project_root: str = str(PROJECT_ROOT)
    data_root: str = "data"  # generated synthetic data; a convenient parent for real sets
    tmp: str = "tmp"  # stage outputs exchanged between stages (see common/layout.py)
    runs: str = "runs"  # tensorboard logs and reports, one folder per stage
    checkpoints: str = "checkpoints"  # trained networks, one folder per stage

    def resolve(self, value: str) -> Path:
        """Absolute path of ``value``: as it is when absolute, else under ``project_root``."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.project_root) / path


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N
    seed: int = 0
    num_workers: int = 2  # data-loader workers and process-pool size
    overwrite: bool = False  # recompute items that are already on disk


@dataclass
class DatasetConfig:
    kind: str = "synthetic"  # synthetic | voc | folder
    root: str = "data/synthetic"  # relative to project_root unless absolute
    train_split: str = "train"
    val_split: str = "val"
    # voc: an extra id list (e.g. SBD's train_aug.txt) used as the training split when set
    train_list: str = ""
    # folder: where image-level labels come from: csv (labels.csv) | xml (VOC bounding-box XMLs)
    label_source: str = "csv"


@dataclass
class SyntheticConfig:
    """The embedded default data set, generated once under ``dataset.root``."""

    seed: int = 2019
    num_train: int = 400
    num_val: int = 100
    min_size: int = 128
    max_size: int = 160
    # class-agnostic saliency training set (different seed; every object is foreground)
    saliency_seed: int = 4242
    saliency_num_train: int = 300
    saliency_num_val: int = 60


@dataclass
class SaliencyConfig:
    encoder: str = "efficientnet_lite0"  # vgg16 (the public checkpoint's) | efficientnet_lite0
    checkpoint: str = ""  # a PiCANet state_dict to use; empty = checkpoints/saliency/best.pt
    pretrained: bool = True  # ImageNet weights for the encoder when training
    weights_path: str = ""  # local file with the encoder's ImageNet weights (VGG16 features)
    input_size: int = 160  # the network's input side; 224 for the public checkpoint (voc preset)
    threshold: float = 0.5  # foreground = probability >= threshold (applied where used)
    minmax_normalise: bool = False  # per-image min-max stretch; invents foreground when off
    paper_attention: bool = False  # transpose in local attention (paper's intent); checkpoints: False
    batch_size: int = 8
    # training (TRAIN_SALIENCY); the defaults are a short CPU recipe, the voc preset has the
    # checkpoint's (SGD, lr 1e-3 / 1e-2, x0.1 every 7000 steps, batch 4, 20 epochs of DUTS-TR)
    train_root: str = ""  # DUTS layout or images/ + masks/; empty = synthetic saliency set
    val_root: str = ""  # empty: DUTS-TE beside DUTS-TR, else 10% of the training images
    train_batch_size: int = 8
    steps: int = 100
    optimizer: str = "adam"  # sgd (the checkpoint's recipe) | adam (converges in fewer CPU steps)
    lr_encoder: float = 1e-4
    lr_decoder: float = 1e-3
    lr_step: int = 100000  # lr x0.1 every lr_step steps
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 100.0
    val_every: int = 50
    # keep the lite0 encoder's BatchNorm at its ImageNet statistics while training (vgg16 has none).
    # DAVIS, batch 8, input 224: frozen val max F 0.740 / 0.752 at steps 100 / 200, trained 0.692 / 0.721
    freeze_encoder_bn: bool = True


@dataclass
class ClassifierConfig:
    backbone: str = "efficientnet_lite0"  # vgg16_bn | resnet50 | efficientnet_lite0
    pretrained: bool = True  # ImageNet weights; False is an explicit choice to train from scratch
    weights_path: str = ""  # local file with ImageNet weights instead of a download
    output_stride: int = 16  # 16 keeps finer CAMs (dilated last stage); 32 = stock network
    crop_size: int = 128
    scale_min: float = 0.7
    scale_max: float = 1.3
    batch_size: int = 16
    steps: int = 100
    # head learning rate; the backbone uses lr * backbone_lr_mult. Demo, 100 steps: 0.05 gave val
    # mAP 0.899, 0.01 gave 0.841, 0.02 with the backbone at 1x gave 0.852
    lr: float = 0.05
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    val_every: int = 50


@dataclass
class AttentionConfig:
    target_layer: str = ""  # module name in the classifier; empty = the backbone's default
    threshold: float = 0.4  # binary class mask = normalised CAM >= threshold
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False  # average with the horizontally flipped image
    batch_size: int = 8
    storage_stride: int = 4  # raw CAMs are stored at 1/stride of the image size, float16
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    # background thresholds swept for the CAM seed mIoU where masks exist
    seed_thresholds: list[float] = field(
        default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8])


@dataclass
class GuideConfig:
    """CREATE_GUIDE: pseudo labels from saliency regions and class regions (docs/guide.md).

    Saliency is binarised at saliency.threshold, class masks come from attention.threshold."""

    rule: str = "region"  # region (the thesis' rule) | pixel (argmax of CAMs on salient pixels)
    min_saliency_area: float = 0.01  # saliency regions under this fraction of the image are dropped
    min_class_pixels: int = 25  # class regions of this many pixels or fewer are dropped
    min_overlap_pixels: int = 1  # a class overlaps a saliency region from this many shared pixels
    unlabelled_foreground: str = "background"  # salient, no class: background (the original) | ignore
    isolated_class_regions: str = "class"  # class region touching no saliency region: class | ignore
    # dense CRF for saliency regions shared by several classes (unaries: -log of normalised CAMs)
    crf_background_channel: bool = False  # add a 1 - max(CAM) background channel to the unaries
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 80.0
    crf_bilateral_srgb: float = 13.0
    crf_bilateral_compat: float = 10.0
    crf_iterations: int = 10
    crf_margin: int = 16  # pixels around a region's bounding box given to the CRF
    workers: int = 2  # processes; 1 = in this process
    splits: list[str] = field(default_factory=lambda: ["train"])
    previews: int = 6  # side-by-side pictures per split (tmp/guide/previews and tensorboard)


@dataclass
class DeeplabConfig:
    """TRAIN_DEEPLAB (docs/deeplab.md). Defaults: the demo's CPU recipe; the voc preset has the
    original's (resnet101, crop 321, batch 10, 20000 steps)."""

    backbone: str = "efficientnet_lite0"  # resnet101 | resnet50 | mobilenet_v3_large | efficientnet_lite0
    output_stride: int = 16  # 8 or 16 (dilated last stages)
    pretrained_backbone: bool = True  # ImageNet classification weights; False = from scratch
    weights_path: str = ""  # local file with the backbone's ImageNet weights
    # torchvision's COCO-with-VOC-labels DeepLab weights: trained with pixel labels on the target
    # classes, so the result is no longer weakly supervised. Off unless asked for explicitly.
    segmentation_pretrained: bool = False
    segmentation_weights_path: str = ""  # local file with those weights instead of a download
    # % (0-100) of training images with a mask whose real mask replaces the pseudo label:
    # 0 = pseudo labels only (weakly supervised), 100 = every mask (the fully supervised bound)
    gt_percentage: float = 0.0
    crop_size: int = 128
    scale_min: float = 0.5
    scale_max: float = 1.5
    batch_size: int = 8  # also the validation batch (images padded to a common size)
    steps: int = 300
    lr: float = 0.007  # backbone; the head gets lr * head_lr_mult
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    # backbone BatchNorm keeps ImageNet statistics (pretrained only). Off: on the demo (lite0, batch 8)
    # frozen statistics left DeepLab predicting background (val mIoU 0.13 vs 0.29 after 150 steps)
    freeze_backbone_bn: bool = False
    val_every: int = 100


@dataclass
class EvalConfig:
    """EVAL_DEEPLAB: every image of ``split`` at its own size (docs/deeplab.md)."""

    split: str = "val"
    batch_size: int = 8  # images per forward pass, padded to a common size (padding is never scored)
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    crf: bool = False  # the original's CRF post-processing
    crf_unary: str = "labels"  # labels (the original: crf_confidence on the predicted label) | softmax
    crf_confidence: float = 0.9
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 121.0
    crf_bilateral_srgb: float = 5.0
    crf_bilateral_compat: float = 4.0
    crf_iterations: int = 10
    overlays: int = 16  # side-by-side images written (0 = none, -1 = all)


@dataclass
class Config:
    preset: str = "demo"
    class_names: list[str] = field(default_factory=list)  # empty = the data set's own list
    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    deeplab: DeeplabConfig = field(default_factory=DeeplabConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def path(self, value: str) -> Path:
        return self.paths.resolve(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name not in ("preset", "class_names")]


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
def _demo(cfg: Config) -> None:
    """Embedded synthetic data, CPU-sized: the whole pipeline in minutes on a laptop."""


def _voc(cfg: Config) -> None:
    """PASCAL VOC 2012 with the original thesis settings."""
    cfg.class_names = list(VOC_CLASSES)
    cfg.dataset.kind = "voc"
    cfg.dataset.root = "data/VOCdevkit/VOC2012"
    cfg.saliency.encoder = "vgg16"
    cfg.saliency.input_size = 224
    cfg.saliency.train_root = "data/DUTS"
    cfg.saliency.train_batch_size = 4
    cfg.saliency.steps = 20 * 10553 // 4
    cfg.saliency.optimizer = "sgd"
    cfg.saliency.lr_encoder, cfg.saliency.lr_decoder, cfg.saliency.lr_step = 1e-3, 1e-2, 7000
    cfg.saliency.val_every = 2000
    cfg.classifier.backbone = "vgg16_bn"
    cfg.classifier.crop_size = 321
    cfg.classifier.batch_size = 16
    cfg.classifier.steps = 8000
    cfg.classifier.val_every = 500
    cfg.attention.target_layer = "features.42"  # the ReLU after conv5_3 in vgg16_bn
    cfg.attention.threshold = 0.4
    cfg.saliency.threshold = 0.5
    cfg.deeplab.backbone = "resnet101"
    cfg.deeplab.crop_size = 321
    cfg.deeplab.batch_size = 10
    cfg.deeplab.steps = 20000
    cfg.deeplab.val_every = 1000


def _folder(cfg: Config) -> None:
    """Your own images: images/ + labels.csv (or bounding-box XMLs), optional masks/."""
    cfg.dataset.kind = "folder"
    cfg.dataset.root = "data/my_images"
    cfg.classifier.crop_size = 224
    cfg.deeplab.crop_size = 321


def _msrc(cfg: Config) -> None:
    """The MSRC objects benchmark in ../shared (VOC layout) with lite0 backbones, CPU-sized."""
    cfg.dataset.kind = "voc"
    cfg.dataset.root = str((PROJECT_ROOT / ".." / "shared" / "data" / "msrc_objects").resolve())
    cfg.saliency.train_root = str((PROJECT_ROOT / ".." / "shared" / "data" / "davis_saliency" / "train").resolve())
    cfg.saliency.val_root = str((PROJECT_ROOT / ".." / "shared" / "data" / "davis_saliency" / "val").resolve())
    cfg.saliency.input_size = 224
    # saliency trained on DAVIS is under-confident on MSRC's objects; the region rule gives a salient
    # region no class unless a CAM overlaps it, so a lower threshold adds recall at little cost in
    # precision. MSRC train pseudo labels: 0.538 at 0.5, 0.594 at 0.2 (docs/RESULTS.md)
    cfg.saliency.threshold = 0.2
    cfg.classifier.crop_size = 224
    cfg.deeplab.crop_size = 224


PRESETS: dict[str, typing.Callable[[Config], None]] = {
    "demo": _demo, "voc": _voc, "folder": _folder, "msrc": _msrc,
}


def preset_help() -> str:
    return "\n".join(f"  {name:8s} {fn.__doc__.strip()}" for name, fn in PRESETS.items())


# --------------------------------------------------------------------------------------------
# Building, overriding, validating
# --------------------------------------------------------------------------------------------
def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _parse_value(text: str, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        text = text.strip().strip("[]")
        parts = [p.strip().strip("'\"") for p in text.split(",") if p.strip()]
        return [_parse_value(p, item_kind, key) for p in parts]
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"{key}: cannot read {text!r} as {getattr(kind, '__name__', kind)}") from None


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply ``section.key=value`` (or ``key=value`` for top-level keys) to ``cfg``."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    target: Any = cfg
    parts = key.split(".")
    if len(parts) == 2:
        section, name = parts
        if section not in SECTIONS:
            raise ConfigError(f"{key}: unknown section {section!r} (sections: {', '.join(SECTIONS)})")
        target = getattr(cfg, section)
    elif len(parts) == 1:
        name = parts[0]
    else:
        raise ConfigError(f"{key}: expected section.key")
    types = _field_types(type(target))
    if name not in types or (target is cfg and name in SECTIONS):
        known = ", ".join(n for n in types if not (target is cfg and n in SECTIONS))
        raise ConfigError(f"{key}: unknown setting (known here: {known})")
    setattr(target, name, _parse_value(text, types[name], key))


def build_config(preset: str = "demo", overrides: typing.Iterable[str] = ()) -> Config:
    """The default config, changed by ``preset`` and then by ``section.key=value`` overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} is unknown (presets: {', '.join(PRESETS)})")
    cfg = Config(preset=preset)
    PRESETS[preset](cfg)
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg


CHOICES = {
    "runtime.device": None,  # checked separately
    "dataset.kind": ("synthetic", "voc", "folder"),
    "dataset.label_source": ("csv", "xml"),
    "saliency.encoder": ("vgg16", "efficientnet_lite0"),
    "saliency.optimizer": ("sgd", "adam"),
    "classifier.backbone": ("vgg16_bn", "resnet50", "efficientnet_lite0"),
    "classifier.output_stride": (16, 32),
    "guide.rule": ("region", "pixel"),
    "guide.unlabelled_foreground": ("background", "ignore"),
    "guide.isolated_class_regions": ("class", "ignore"),
    "deeplab.backbone": ("resnet101", "resnet50", "mobilenet_v3_large", "efficientnet_lite0"),
    "deeplab.output_stride": (8, 16),
    "eval.crf_unary": ("labels", "softmax"),
}
UNIT_INTERVAL = ("saliency.threshold", "attention.threshold", "guide.min_saliency_area",
                 "eval.crf_confidence")
POSITIVE = ("saliency.input_size", "saliency.batch_size", "saliency.train_batch_size",
            "saliency.val_every", "classifier.crop_size", "classifier.batch_size",
            "classifier.val_every", "attention.batch_size", "attention.storage_stride",
            "guide.workers", "guide.min_overlap_pixels", "deeplab.crop_size", "deeplab.batch_size",
            "deeplab.val_every", "synthetic.min_size", "saliency.lr_step", "eval.batch_size")
NON_NEGATIVE = ("runtime.num_workers", "saliency.steps", "classifier.steps", "deeplab.steps",
                "synthetic.num_train", "synthetic.num_val", "guide.min_class_pixels",
                "guide.crf_iterations", "guide.crf_margin", "guide.previews",
                "eval.crf_iterations")


def _type_ok(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        return isinstance(value, list) and all(_type_ok(v, item_kind) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def validate(cfg: Config, stages: typing.Iterable[str] = ()) -> Config:
    """Check every setting; raise one :class:`ConfigError` listing all problems.

    ``stages`` are the stages about to run: paths they need must exist.
    """
    stages = set(stages)
    problems: list[str] = []
    # types, including sections replaced wholesale by a caller
    for name, kind in _field_types(Config).items():
        value = getattr(cfg, name)
        if name in SECTIONS:
            if not isinstance(value, kind):
                problems.append(f"{name}: expected a {kind.__name__}")
                continue
            for key, item_kind in _field_types(kind).items():
                if not _type_ok(getattr(value, key), item_kind):
                    problems.append(f"{name}.{key}: expected {getattr(item_kind, '__name__', item_kind)},"
                                    f" got {getattr(value, key)!r}")
        elif not _type_ok(value, kind):
            problems.append(f"{name}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))

    def get(key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    for key, choices in CHOICES.items():
        if choices is not None and get(key) not in choices:
            problems.append(f"{key}: {get(key)!r} is not one of {', '.join(map(str, choices))}")
    device = cfg.runtime.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"runtime.device: {device!r} is not auto, cpu, cuda or cuda:N")
    for key in UNIT_INTERVAL:
        if not 0.0 <= get(key) <= 1.0:
            problems.append(f"{key}: {get(key)} is outside [0, 1]")
    for key in POSITIVE:
        if get(key) <= 0:
            problems.append(f"{key}: must be positive, got {get(key)}")
    for key in NON_NEGATIVE:
        if get(key) < 0:
            problems.append(f"{key}: must not be negative, got {get(key)}")
    if not 0.0 <= cfg.deeplab.gt_percentage <= 100.0:
        problems.append(f"deeplab.gt_percentage: {cfg.deeplab.gt_percentage} is not a percentage (0 to 100)")
    if cfg.synthetic.max_size < cfg.synthetic.min_size:
        problems.append("synthetic.max_size: smaller than synthetic.min_size")
    for section in ("classifier", "deeplab"):
        sub = getattr(cfg, section)
        if not 0 < sub.scale_min <= sub.scale_max:
            problems.append(f"{section}.scale_min/scale_max: need 0 < scale_min <= scale_max")
    for key in ("attention.scales", "eval.scales"):
        if not get(key) or any(s <= 0 for s in get(key)):
            problems.append(f"{key}: need one or more positive scales, got {get(key)}")
    if not cfg.attention.splits:
        problems.append("attention.splits: empty")
    if len(set(cfg.class_names)) != len(cfg.class_names):
        problems.append("class_names: names repeat")

    # paths that must exist for the stages about to run
    if cfg.dataset.kind != "synthetic" and not cfg.path(cfg.dataset.root).is_dir():
        problems.append(f"dataset.root: {cfg.path(cfg.dataset.root)} is not a folder")
    if cfg.dataset.train_list and not cfg.path(cfg.dataset.train_list).is_file():
        problems.append(f"dataset.train_list: {cfg.path(cfg.dataset.train_list)} does not exist")
    for key in ("saliency.checkpoint", "saliency.weights_path", "classifier.weights_path",
                "deeplab.weights_path"):
        if get(key) and not cfg.path(get(key)).is_file():
            problems.append(f"{key}: {cfg.path(get(key))} does not exist")
    if "train_saliency" in stages:
        for key in ("saliency.train_root", "saliency.val_root"):
            if get(key) and not cfg.path(get(key)).is_dir():
                problems.append(f"{key}: {cfg.path(get(key))} is not a folder")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg
