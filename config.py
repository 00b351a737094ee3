"""Every setting of the pipeline, typed and grouped per stage.

Edit the defaults here, pick a preset (``python main.py --preset voc``) or override single keys
(``--set classifier.steps=200``; a setting of a group as ``--set guide.crf.bilateral_sxy=60``). The
whole configuration is validated by :func:`validate` before any stage starts; an unknown key, a wrong
type, a value out of range or a missing path is reported in one error that names the setting.

Class ids: masks and pseudo labels hold 0 for background, 1..C for the classes (in the order of
``Config.class_names``) and 255 for ignore. Image-level label vectors have C entries, entry c-1 for
class id c.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import backbones

PROJECT_ROOT = Path(__file__).resolve().parent

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, out of range, or names a missing path."""


# --------------------------------------------------------------------------------------------
# Declaring a setting: its default, what it means, and the values it may take, in one place
# --------------------------------------------------------------------------------------------
def setting(
    default: Any,
    help: str = "",
    *,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    each_low: float | None = None,
    each_high: float | None = None,
    each_positive: bool = False,
    nonempty: bool = False,
    path: str | None = None,
) -> Any:
    """A dataclass field with its meaning and allowed values beside it; :func:`validate` and
    ``--help`` read them from here. ``low``/``high`` are inclusive bounds, ``positive`` means > 0;
    ``each_*`` bound every item of a list; ``path`` is ``file`` or ``dir`` for a path that must exist
    when set (empty means unset)."""
    rules = {
        k: v
        for k, v in dict(
            choices=choices,
            low=low,
            high=high,
            positive=positive,
            each_low=each_low,
            each_high=each_high,
            each_positive=each_positive,
            nonempty=nonempty,
            path=path,
        ).items()
        if v is not None and v is not False
    }
    metadata = {"help": help, "rules": rules}
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata=metadata)
    return field(default=default, metadata=metadata)


def group(cls: type, help: str = "", **defaults: Any) -> Any:
    """A group of settings declared once in the dataclass ``cls`` and used in several sections
    (``section.name.key``), each with its own defaults: ``defaults`` replace the class's."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(sorted(unknown))}")
    return field(default_factory=lambda: cls(**defaults), metadata={"help": help})


UNIT = dict(low=0.0, high=1.0)
COUNT = dict(low=0)


# --------------------------------------------------------------------------------------------
# Groups of settings shared by several sections
# --------------------------------------------------------------------------------------------
@dataclass
class CrfConfig:
    """A fully connected CRF's kernels (Kraehenbuehl & Koltun; common/crf.py): a smoothness term over
    pixel positions and an appearance term over positions and colours. The defaults are
    CREATE_GUIDE's; EVAL_DEEPLAB's post-processing has the original's (``EvalConfig.crf``)."""

    gaussian_sxy: float = setting(3.0, "smoothness kernel width (pixels)", positive=True)
    gaussian_compat: float = setting(3.0, "smoothness weight", low=0.0)
    bilateral_sxy: float = setting(80.0, "appearance kernel width (pixels)", positive=True)
    bilateral_srgb: float = setting(13.0, "appearance kernel colour width", positive=True)
    bilateral_compat: float = setting(10.0, "appearance weight", low=0.0)
    iterations: int = setting(10, "mean-field iterations", **COUNT)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
@dataclass
class PathsConfig:
    """Where things live. Relative paths are relative to ``project_root``."""

    project_root: str = setting(str(PROJECT_ROOT), "the folder relative paths start from")
    data_root: str = setting("data", "generated synthetic data; a convenient parent for real sets")
    tmp: str = setting("tmp", "stage outputs exchanged between stages (see common/layout.py)")
    runs: str = setting("runs", "tensorboard logs and reports, one folder per stage")
    checkpoints: str = setting("checkpoints", "trained networks, one folder per stage")
    experiments: str = setting("experiments", "parent of experiments/<runtime.experiment>/{tmp,runs,checkpoints}")

    def resolve(self, value: str) -> Path:
        """Absolute path of ``value``: as it is when absolute, else under ``project_root``."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.project_root) / path


@dataclass
class RuntimeConfig:
    device: str = setting("auto", "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    seed: int = setting(0, "seed of every random draw (batches, augmentation, initialisation)", low=0, high=2**63 - 1)
    num_workers: int = setting(2, "data-loader workers and process-pool size", **COUNT)
    overwrite: bool = setting(False, "recompute items that are already on disk; retrain from scratch")
    precision: str = setting(
        "auto",
        "autocast for training and inference; fp16 adds a grad scaler; auto = "
        "bf16 where the hardware computes it natively, else fp32",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    memory_format: str = setting(
        "auto",
        "the networks' weights and activations in training and inference (PiCANet, the classifier, "
        "DeepLab): channels_last | contiguous; auto = channels_last on a CPU at fp32 (lite0 steps "
        "1.1-1.3x faster on an AVX2 EPYC, the one CPU measured at fp32), contiguous elsewhere "
        "(slower on a bf16 CPU; docs/RESULTS.md)",
        choices=("auto", "channels_last", "contiguous"),
    )
    checkpoint_every: int = setting(
        50, "trainings save their full state every this many steps, validation or not (0 = only at validation)", **COUNT
    )
    experiment: str = setting(
        "",
        "a name keeps this configuration's tmp/, runs/ and checkpoints/ together "
        "under paths.experiments/<name>/ (empty: the paths.* folders as they are)",
    )


@dataclass
class DatasetConfig:
    kind: str = setting(
        "synthetic",
        "synthetic (generated) | voc (VOC folder layout) | folder (your images)",
        choices=("synthetic", "voc", "folder"),
    )
    root: str = setting("data/synthetic", "the data set's folder; never written to (but for synthetic)")
    train_split: str = setting("train", "split the networks train on")
    val_split: str = setting("val", "split they are validated on")
    train_list: str = setting(
        "", "voc: an extra id list (e.g. SBD's train_aug.txt) used as the training split when set", path="file"
    )
    label_source: str = setting(
        "csv", "folder: image labels from labels.csv or VOC bounding-box XMLs", choices=("csv", "xml")
    )
    on_bad_image: str = setting(
        "stop",
        "an unreadable, truncated or mismatched image or mask: stop before "
        "any work listing every problem | skip those images (listed in runs/)",
        choices=("stop", "skip"),
    )


@dataclass
class SyntheticConfig:
    """The embedded default data set, generated once under ``dataset.root``."""

    seed: int = setting(2019, "seed of the generated segmentation set", low=0)
    num_train: int = setting(400, "generated training images", **COUNT)
    num_val: int = setting(100, "generated validation images", **COUNT)
    min_size: int = setting(128, "smallest image side", positive=True)
    max_size: int = setting(160, "largest image side", positive=True)
    saliency_seed: int = setting(4242, "seed of the class-agnostic saliency set (every object foreground)", low=0)
    saliency_num_train: int = setting(300, "generated saliency training images", **COUNT)
    saliency_num_val: int = setting(60, "generated saliency validation images", **COUNT)


@dataclass
class SaliencyConfig:
    encoder: str = setting(
        "efficientnet_lite0",
        "PiCANet's encoder (vgg16 is the public checkpoint's)",
        choices=backbones.names(for_="saliency"),
    )
    checkpoint: str = setting(
        "",
        "a ready PiCANet state_dict (e.g. the public checkpoint); empty = the one TRAIN_SALIENCY trains",
        path="file",
    )
    pretrained: bool = setting(True, "ImageNet weights for the encoder when training")
    weights_path: str = setting("", "local file with the encoder's ImageNet weights (VGG16 features)", path="file")
    input_size: int = setting(160, "the network's input side; 224 for the public checkpoint", positive=True)
    # a salient-object network marks one object per view: seen larger, a bed of flowers or a shelf of
    # books shows objects a whole-frame view calls background
    scales: list[float] = setting(
        [1.0],
        "CREATE_SALIENCY runs the network at input_size times each scale (rounded to a multiple of "
        "16) and keeps the pixelwise maximum of the maps (foreground at any scale is foreground)",
        nonempty=True,
        each_positive=True,
    )
    threshold: float = setting(0.5, "foreground = probability >= threshold (applied where used)", **UNIT)
    minmax_normalise: bool = setting(False, "per-image min-max stretch; invents foreground when on")
    paper_attention: bool = setting(False, "transpose in local attention (paper's intent); checkpoints: False")
    batch_size: int = setting(8, "images per forward pass in CREATE_SALIENCY and validation", positive=True)
    # training (TRAIN_SALIENCY); the defaults are a short CPU recipe, the voc preset has the
    # checkpoint's (SGD, lr 1e-3 / 1e-2, x0.1 every 7000 steps, batch 4, 20 epochs of DUTS-TR)
    train_root: str = setting(
        "",
        "saliency training pairs: a DUTS layout or images/ + masks/ (e.g. DUTS-TR); "
        "empty = the synthetic saliency set, for the synthetic data set only",
        path="dir",
    )
    val_root: str = setting(
        "", "validation pairs; empty: DUTS-TE beside DUTS-TR, else 10% of the training images", path="dir"
    )
    second_val_root: str = setting(
        "",
        "a second validation set (images/ + masks/) of other objects, scored at "
        "every validation beside val_root (the best network is chosen on val_root)",
        path="dir",
    )
    train_batch_size: int = setting(8, "training batch", positive=True)
    steps: int = setting(100, "training steps", **COUNT)
    optimizer: str = setting(
        "adam", "sgd (the checkpoint's recipe) | adam (converges in fewer CPU steps)", choices=("sgd", "adam")
    )
    lr_encoder: float = setting(1e-4, "encoder learning rate", positive=True)
    lr_decoder: float = setting(1e-3, "decoder learning rate", positive=True)
    lr_step: int = setting(100000, "learning rate x0.1 every lr_step steps", positive=True)
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float = setting(5e-4, "weight decay", low=0.0)
    grad_clip: float = setting(100.0, "gradient norm clip", positive=True)
    val_every: int = setting(50, "validate every this many steps", positive=True)
    freeze_encoder_bn: bool = setting(
        True,
        "keep the lite0 encoder's BatchNorm at its ImageNet statistics "
        "(docs/RESULTS.md: frozen scored higher on DAVIS)",
    )


@dataclass
class ClassifierConfig:
    backbone: str = setting(
        "efficientnet_lite0",
        "the classifier's ImageNet backbone (common/backbones.py)",
        choices=backbones.names(for_="classifier"),
    )
    pretrained: bool = setting(True, "ImageNet weights; False is an explicit choice to train from scratch")
    weights_path: str = setting("", "local file with ImageNet weights instead of a download", path="file")
    output_stride: int = setting(
        16,
        "16 keeps finer CAMs (dilated last stage); 32 = stock network",
        choices=backbones.output_strides(for_="classifier"),
    )
    crop_size: int = setting(128, "training crop side", positive=True)
    scale_min: float = setting(0.7, "smallest random rescale", positive=True)
    scale_max: float = setting(1.3, "largest random rescale", positive=True)
    batch_size: int = setting(16, "training and validation batch", positive=True)
    steps: int = setting(100, "training steps", **COUNT)
    lr: float = setting(
        0.05,
        "head learning rate; the backbone uses lr * backbone_lr_mult "
        "(docs/RESULTS.md has the comparison behind the default)",
        positive=True,
    )
    backbone_lr_mult: float = setting(0.1, "backbone learning rate as a fraction of the head's", low=0.0)
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float = setting(1e-4, "weight decay", low=0.0)
    val_every: int = setting(50, "validate every this many steps", positive=True)


@dataclass
class AttentionConfig:
    target_layer: str = setting("", "module name in the classifier; empty = the backbone's default")
    threshold: float = setting(0.4, "binary class mask = normalised CAM >= threshold", **UNIT)
    scales: list[float] = setting([1.0], "image scales whose CAMs are averaged", nonempty=True, each_positive=True)
    flip: bool = setting(False, "average with the horizontally flipped image")
    batch_size: int = setting(8, "images per forward pass", positive=True)
    storage_stride: int = setting(4, "raw CAMs are stored at 1/stride of the image size, float16", positive=True)
    splits: list[str] = setting(["train", "val"], "splits whose CAMs are computed", nonempty=True)
    seed_thresholds: list[float] = setting(
        [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8],
        "background thresholds swept for the CAM seed mIoU where masks exist",
        nonempty=True,
        each_low=0.0,
        each_high=1.0,
    )


@dataclass
class GuideConfig:
    """CREATE_GUIDE: pseudo labels from saliency regions and class regions (docs/guide.md).

    Saliency is binarised at saliency.threshold, class masks come from attention.threshold."""

    rule: str = setting(
        "region", "region (the thesis' rule) | pixel (argmax of CAMs on salient pixels)", choices=("region", "pixel")
    )
    min_saliency_area: float = setting(0.01, "saliency regions under this fraction of the image are dropped", **UNIT)
    min_class_pixels: int = setting(25, "class regions of this many pixels or fewer are dropped", **COUNT)
    min_overlap_pixels: int = setting(
        1, "a class overlaps a saliency region from this many shared pixels", positive=True
    )
    unlabelled_foreground: str = setting(
        "background", "salient, no class: background (the original) | ignore", choices=("background", "ignore")
    )
    isolated_class_regions: str = setting(
        "class", "class region touching no saliency region: class | ignore", choices=("class", "ignore")
    )
    crf_background_channel: bool = setting(False, "add a 1 - max(CAM) background channel to the CRF unaries")
    crf: CrfConfig = group(
        CrfConfig,
        "the dense CRF that splits a saliency region shared by several classes (unaries: -log of normalised CAMs)",
    )
    crf_margin: int = setting(16, "pixels around a region's bounding box given to the CRF", **COUNT)
    # on MSRC the CAMs of face and body are nearly equal per pixel, so the CRF's choice between them
    # is close to a coin toss; clusters named by thousands of pixels' CAMs told them apart (face
    # 0.63 -> 0.75, body 0.48 -> 0.60 in the pseudo labels; docs/RESULTS.md, docs/guide.md)
    split: str = setting(
        "crf",
        "how a saliency region shared by several classes is split: crf (the original: a dense CRF on "
        "the CAMs) | clusters (k-means clusters of the classifier's CAM-layer features over every "
        "shared region of the split, each cluster named by its pixels' mean CAM shares; reads TRAIN_SEED's network)",
        choices=("crf", "clusters"),
    )
    cluster_counts: list[int] = setting(
        [8, 16, 32],
        "guide.split clusters: k-means models, one per cluster count; a pixel sums their votes",
        nonempty=True,
        each_positive=True,
    )
    cluster_pixels_per_region: int = setting(
        4000, "guide.split clusters: pixels of one shared region sampled to fit and name the clusters", positive=True
    )
    cluster_pixels_per_set: int = setting(
        200000,
        "guide.split clusters: most pixels kept per set of classes (a uniform sample; memory: this x the "
        "CAM layer's channels x 2 bytes per set)",
        positive=True,
    )
    uncertain_saliency: list[float] = setting(
        [],
        "[low, high]: pixels whose saliency probability is in [low, high) are ignore (255) in the "
        "pseudo label; [] = off (the original)",
        each_low=0.0,
        each_high=1.0,
    )
    workers: int = setting(2, "processes; 1 = in this process", positive=True)
    splits: list[str] = setting(["train"], "splits that get pseudo labels", nonempty=True)
    previews: int = setting(6, "side-by-side pictures per split (tmp/guide/previews and tensorboard)", **COUNT)


@dataclass
class DeeplabConfig:
    """TRAIN_DEEPLAB (docs/deeplab.md). Defaults: the demo's CPU recipe; the voc preset has the
    original's (resnet101, crop 321, batch 10, 20000 steps)."""

    backbone: str = setting(
        "efficientnet_lite0",
        "DeepLab's ImageNet backbone (common/backbones.py)",
        choices=backbones.names(for_="deeplab"),
    )
    output_stride: int = setting(
        16, "the backbone's output stride (dilated last stages)", choices=backbones.output_strides(for_="deeplab")
    )
    pretrained_backbone: bool = setting(True, "ImageNet classification weights; False = from scratch")
    weights_path: str = setting("", "local file with the backbone's ImageNet weights", path="file")
    # torchvision's COCO-with-VOC-labels DeepLab weights were trained with pixel labels on the target
    # classes, so the result is no longer weakly supervised: off unless asked for explicitly
    segmentation_pretrained: bool = setting(
        False, "start from torchvision's COCO/VOC segmentation weights (NOT weak supervision)"
    )
    segmentation_weights_path: str = setting("", "local file with those weights instead of a download", path="file")
    # a self-training round fine-tunes the network that made its labels instead of training anew
    init_checkpoint: str = setting(
        "",
        "start from the weights of this TRAIN_DEEPLAB checkpoint (same backbone and classes), with a "
        "fresh optimiser and schedule; empty = the ImageNet backbone",
        path="file",
    )
    # the classifier has learnt this data set's classes from its image labels alone, which ImageNet's
    # weights have not: weak supervision holds
    backbone_from_classifier: bool = setting(
        False,
        "start the backbone from TRAIN_SEED's trained classifier (the same backbone, trained on this "
        "data set's image labels) instead of ImageNet's weights",
    )
    gt_percentage: float = setting(
        0.0,
        "% of training images with a mask whose real mask replaces the pseudo "
        "label: 0 = weakly supervised, 100 = the fully supervised bound",
        low=0.0,
        high=100.0,
    )
    crop_size: int = setting(128, "training crop side", positive=True)
    scale_min: float = setting(0.5, "smallest random rescale", positive=True)
    scale_max: float = setting(1.5, "largest random rescale", positive=True)
    batch_size: int = setting(8, "training batch, also the validation batch (padding never scored)", low=2)
    steps: int = setting(300, "training steps", **COUNT)
    lr: float = setting(0.007, "backbone learning rate; the head gets lr * head_lr_mult", positive=True)
    head_lr_mult: float = setting(10.0, "head learning rate as a multiple of the backbone's", positive=True)
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float = setting(1e-4, "weight decay", low=0.0)
    poly_power: float = setting(0.9, "poly learning-rate schedule power", low=0.0)
    freeze_backbone_bn: bool = setting(
        False,
        "backbone BatchNorm keeps ImageNet statistics (pretrained only); "
        "off: frozen statistics left the demo predicting background",
    )
    val_every: int = setting(100, "validate every this many steps", positive=True)
    # fewer weights to fit to noisy labels, and a backward pass that stops early
    frozen_stride: int = setting(
        0,
        "backbone layers that run before the first one coarser than this stride keep their "
        "ImageNet weights (4 or 8; 0 = every layer trains, the original)",
        choices=(0, 4, 8),
    )
    # the small-loss trick for noisy labels: once the network has learnt what most pseudo labels
    # agree on, the pixels whose label it finds least likely are the likeliest to be wrong
    ignore_hardest: float = setting(
        0.0,
        "fraction of each batch's labelled pixels with the highest loss left out of the loss "
        "(pseudo labels and real masks alike); 0 = off (the original)",
        low=0.0,
        high=0.9,
    )
    ignore_hardest_warmup: float = setting(
        0.3, "ignore_hardest rises linearly from 0 over this fraction of the steps", **UNIT
    )
    # late in a training the weights still jump from batch to batch around where they are heading
    average_decay: float = setting(
        0.0,
        "decay of an exponential moving average of the weights, which validation, best.pt, last.pt and "
        "EVAL_DEEPLAB use (0.995: about the last 200 steps; at step k it is at most (1 + k) / (10 + k)); "
        "0 = the trained weights themselves",
        low=0.0,
        high=0.9999,
    )


@dataclass
class EvalConfig:
    """EVAL_DEEPLAB: every image of ``split`` at its own size (docs/deeplab.md)."""

    split: str = setting("val", "the split segmented and scored")
    # best.pt is the step with the highest val mIoU while training: picked on the masks of the very
    # images EVAL_DEEPLAB scores, which flatters the score and lets pixel labels steer a weakly
    # supervised result
    checkpoint: str = setting(
        "last",
        "last (the trained network) | best (the step with the highest val mIoU during training; "
        "chosen on the validation masks)",
        choices=("last", "best"),
    )
    batch_size: int = setting(
        8, "images per forward pass, padded to a common size (padding never scored)", positive=True
    )
    scales: list[float] = setting(
        [1.0], "image scales whose class probabilities are averaged", nonempty=True, each_positive=True
    )
    flip: bool = setting(False, "average with the horizontally flipped image")
    # on MSRC val the CRF on the network's probabilities raised all four benchmark DeepLabs by 0.04-0.07
    # mIoU (docs/RESULTS.md); the original's unaries (its predicted labels at 0.9) changed 0.0001
    use_crf: bool = setting(True, "dense-CRF post-processing of the predictions (its kernels: eval.crf)")
    crf_unary: str = setting(
        "softmax",
        "softmax (the network's probabilities) | labels (the original: crf_confidence on the predicted label)",
        choices=("labels", "softmax"),
    )
    crf_confidence: float = setting(0.9, "probability given to the predicted label in the CRF unaries", **UNIT)
    crf: CrfConfig = group(
        CrfConfig,
        "the post-processing CRF's kernels, the original's values",
        bilateral_sxy=121.0,
        bilateral_srgb=5.0,
        bilateral_compat=4.0,
    )
    overlays: int = setting(16, "side-by-side images written (0 = none, -1 = all)", low=-1)


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

# settings that moved: an old --set or saved config.json is told the new name instead of "unknown"
RENAMED = {
    "eval.crf": "eval.use_crf",
    **{
        f"{section}.crf_{f.name}": f"{section}.crf.{f.name}"
        for section in ("guide", "eval")
        for f in dataclasses.fields(CrfConfig)
    },
}

# settings added since outputs were first recorded, with the value that does what the code did
# before them: a record without such a setting, whose value now is that one, is still up to date
ADDED = {
    "guide.uncertain_saliency": [],
    "saliency.scales": [1.0],
    "deeplab.ignore_hardest": 0.0,
    "deeplab.ignore_hardest_warmup": 0.3,
    "deeplab.frozen_stride": 0,
    "deeplab.average_decay": 0.0,
    "deeplab.init_checkpoint": "",
    "deeplab.backbone_from_classifier": False,
    "eval.checkpoint": "best",
    "guide.split": "crf",
    "guide.cluster_counts": [8, 16, 32],
    "guide.cluster_pixels_per_region": 4000,
    "guide.cluster_pixels_per_set": 200000,
}


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
    """The MSRC objects benchmark in ../shared (VOC layout) with lite0 backbones, saliency trained on DUTS."""
    cfg.dataset.kind = "voc"
    cfg.dataset.root = str((PROJECT_ROOT / ".." / "shared" / "data" / "msrc_objects").resolve())
    # DUTS-TR's 4,000 varied photos, not DAVIS's 419 frames of 30 videos: the DAVIS network missed
    # objects of other kinds (docs/RESULTS.md); davis_saliency/val stays a second validation set
    # (benchmarks/msrc.py scores it)
    cfg.saliency.train_root = str((PROJECT_ROOT / ".." / "shared" / "data" / "duts_saliency" / "train").resolve())
    cfg.saliency.val_root = str((PROJECT_ROOT / ".." / "shared" / "data" / "duts_saliency" / "val").resolve())
    davis_val = (PROJECT_ROOT / ".." / "shared" / "data" / "davis_saliency" / "val").resolve()
    cfg.saliency.second_val_root = str(davis_val) if davis_val.is_dir() else ""
    cfg.saliency.input_size = 224
    # the best of the benchmark's sweep on MSRC train (0.5 to 0.05, scored with the CRF split) with
    # the DUTS network at 600 steps (0.778; 0.2 0.777, 0.05 0.760: docs/BENCHMARKS.md) and at 300
    # (0.779; 0.05, by a script on the same maps, 0.771). On the 300-step maps under the preset's
    # cluster split 0.075 tied it (0.798 against 0.797) and 0.05 lost (0.793). Under the cluster
    # split, against 0.2: pseudo labels 0.790 -> 0.797 (recall 0.870 -> 0.899), DeepLab on MSRC val
    # up at both seeds, each within one training's spread (0.804 -> 0.822, 0.790 -> 0.801;
    # docs/RESULTS.md)
    cfg.saliency.threshold = 0.1
    cfg.classifier.crop_size = 224
    # 300 steps, not 100: val mAP 0.953 -> 0.986 and pseudo labels 0.752 -> 0.762 on MSRC train
    cfg.classifier.steps = 300
    # CAMs at four scales and flipped: a face seen at twice its size gets a map of its own, which
    # single-scale CAMs at output stride 16 blur into the body's (face 0.38 -> 0.64 in the pseudo
    # labels); smaller saliency regions (0.2 % of the image) keep small objects; the class-mask
    # threshold 0.3 lets more regions meet a class. Chosen on MSRC train (docs/RESULTS.md)
    cfg.attention.scales = [0.5, 1.0, 1.5, 2.0]
    cfg.attention.flip = True
    cfg.attention.threshold = 0.3
    cfg.guide.min_saliency_area = 0.002
    # face and body share their saliency regions and have nearly equal CAMs; clusters of the
    # classifier's features named by their pixels' CAMs told them apart: pseudo labels 0.775 ->
    # 0.790 (face 0.63 -> 0.75, body 0.48 -> 0.60) and DeepLab 0.765 -> 0.785 over two seeds on
    # MSRC val, +0.018 / +0.024 seed by seed, at saliency.threshold 0.2 (docs/RESULTS.md); at 0.1
    # pseudo labels 0.779 -> 0.797 and DeepLab +0.013 on seed 0 at 1,800 steps (docs/BENCHMARKS.md;
    # +0.023 and +0.026 in earlier runs)
    cfg.guide.split = "clusters"
    cfg.deeplab.crop_size = 224
    # the stem and blocks 0-2 keep their ImageNet weights: on MSRC val, seeds 0 and 1, DeepLab on
    # pseudo labels 0.722 -> 0.754 and on real masks 0.804 -> 0.816, weak/full 0.898 -> 0.924
    # (seed 2 frozen: 0.747 / 0.803, 0.931); steps about 22 % faster (docs/RESULTS.md)
    cfg.deeplab.frozen_stride = 8
    # the average of the weights over about the last 200 steps: the same scores on MSRC val (means of
    # seeds 0 and 1: pseudo labels 0.797 -> 0.798, real masks 0.859 -> 0.860), but a validation curve
    # without the single-step dips that made a plateau check read noise (docs/RESULTS.md)
    cfg.deeplab.average_decay = 0.995


PRESETS: dict[str, typing.Callable[[Config], None]] = {
    "demo": _demo,
    "voc": _voc,
    "folder": _folder,
    "msrc": _msrc,
}


def preset_help() -> str:
    return "\n".join(f"  {name:8s} {fn.__doc__.strip()}" for name, fn in PRESETS.items())


# --------------------------------------------------------------------------------------------
# Building, overriding, validating
# --------------------------------------------------------------------------------------------
def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _is_group(kind: Any) -> bool:
    """Whether a declared type holds settings (a section or a :func:`group`) rather than being one."""
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _walk(values: Any, prefix: str = "", groups: bool = False) -> Iterator[tuple[str, Any, dict]]:
    """(dotted key, value, {"help": ..., "rules": {...}}) of every setting in a section or group, a
    group's settings after it as ``group.name``; with ``groups`` the groups themselves too."""
    types = _field_types(type(values))
    for f in dataclasses.fields(values):
        key, value = f"{prefix}.{f.name}" if prefix else f.name, getattr(values, f.name)
        info = {"help": f.metadata.get("help", ""), "rules": dict(f.metadata.get("rules", {}))}
        if _is_group(types[f.name]):
            if groups:
                yield key, value, info
            yield from _walk(value, key, groups)
        else:
            yield key, value, info


def declared(section_cls: type) -> dict[str, dict]:
    """{name: {"help": ..., "rules": {...}}} of every setting of a section as :func:`setting` declared
    them; a group's settings as ``group.name``."""
    return {key: info for key, _, info in _walk(section_cls())}


def get_setting(cfg: Config, key: str) -> Any:
    """The value of ``section.name`` or ``section.group.name``."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _declared_type(key: str) -> Any:
    """The declared type of ``key`` in :class:`Config`, or None when there is no such setting or group."""
    kind: Any = Config
    for part in key.split("."):
        kind = _field_types(kind).get(part) if _is_group(kind) else None
    return kind


def _renamed(key: str) -> str:
    message = f"{key} is now {RENAMED[key]}"
    kind = _declared_type(key)
    if _is_group(kind):  # the old name now means something else: say what
        message += f" ({key}.* now holds a group of settings: {', '.join(declared(kind))})"
    return message


def _resolve(cfg: Config, key: str) -> tuple[Any, str, Any]:
    """(the object holding setting ``key``, the setting's name there, its declared type) for ``key`` =
    ``name`` (top level), ``section.name`` or ``section.group.name``; a ConfigError naming the key
    when no setting has that name."""
    if key in RENAMED:
        raise ConfigError(_renamed(key))
    parts = key.split(".")
    if len(parts) > 1 and parts[0] not in SECTIONS:
        raise ConfigError(f"{key}: unknown section {parts[0]!r} (sections: {', '.join(SECTIONS)})")
    target: Any = cfg
    for depth, name in enumerate(parts):
        types = _field_types(type(target))
        if len(parts) == 1:  # a top-level setting: a section is not one
            types = {n: kind for n, kind in types.items() if n not in SECTIONS}
        if name not in types:
            raise ConfigError(f"{key}: unknown setting (known here: {', '.join(types)})")
        last = depth == len(parts) - 1
        if last and _is_group(types[name]):
            raise ConfigError(
                f"{key}: a group of settings; set one of them: "
                + ", ".join(f"{key}.{n}" for n in declared(types[name]))
            )
        if last:
            return target, name, types[name]
        if not _is_group(types[name]):
            raise ConfigError(f"{key}: {'.'.join(parts[: depth + 1])} is a setting, not a group of settings")
        target = getattr(target, name)
    raise AssertionError("unreachable")


def set_setting(cfg: Config, key: str, value: Any) -> None:
    """Set ``key`` (as :func:`apply_override` names it) to ``value`` as it is; :func:`validate` checks it."""
    target, name, _ = _resolve(cfg, key)
    setattr(target, name, value)


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
    """Apply ``section.key=value``, ``section.group.key=value`` (or ``key=value`` for top-level keys)
    to ``cfg``, the value read as the setting's type."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    target, name, kind = _resolve(cfg, key)
    setattr(target, name, _parse_value(text, kind, key))


def build_config(preset: str = "demo", overrides: typing.Iterable[str] = ()) -> Config:
    """The default config, changed by ``preset`` and then by ``section.key=value`` overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} is unknown (presets: {', '.join(PRESETS)})")
    cfg = Config(preset=preset)
    PRESETS[preset](cfg)
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg


def settings_help() -> str:
    """Every setting with its default and meaning, for ``--help``."""
    lines = []
    defaults = Config()
    for section in SECTIONS:
        lines.append(f"  [{section}]")
        for key, default, info in _walk(getattr(defaults, section), section, groups=True):
            if dataclasses.is_dataclass(default):
                lines.append(f"    {key + '.*':<34} {'':<14} {info['help']}")
                continue
            if isinstance(default, list):
                default = ",".join(map(str, default))
            allowed = info["rules"].get("choices")
            text = info["help"] + (f" [{' | '.join(map(str, allowed))}]" if allowed and "|" not in info["help"] else "")
            lines.append(f"    {key:<34} {default!s:<14} {text}")
    return "\n".join(lines)


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


def _rule_problems(key: str, value: Any, rules: dict) -> list[str]:
    """What is wrong with one setting by its declared rules (paths aside)."""
    problems = []
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        problems.append(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    low, high = rules.get("low"), rules.get("high")
    if isinstance(value, float) and not math.isfinite(value):
        return problems + [f"{key}: {value} is not a finite number"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if low == 0.0 and high == 1.0 and not 0.0 <= value <= 1.0:
            problems.append(f"{key}: {value} is outside [0, 1]")
        elif low is not None and high is not None and not low <= value <= high:
            problems.append(f"{key}: {value} is outside [{low}, {high}]")
        elif low == 0 and high is None and value < 0:
            problems.append(f"{key}: must not be negative, got {value}")
        elif low is not None and high is None and value < low:
            problems.append(f"{key}: must be at least {low}, got {value}")
        if rules.get("positive") and value <= 0:
            problems.append(f"{key}: must be positive, got {value}")
    if isinstance(value, list):
        if rules.get("nonempty") and not value:
            problems.append(f"{key}: empty; give one or more values")
        if rules.get("each_positive") and any(v <= 0 for v in value):
            problems.append(f"{key}: need one or more positive values, got {value}")
        each_low, each_high = rules.get("each_low"), rules.get("each_high")
        if each_low is not None and each_high is not None and any(not each_low <= v <= each_high for v in value):
            problems.append(f"{key}: every value must be in [{each_low}, {each_high}], got {value}")
    return problems


def _device_problem(device: str) -> str | None:
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        return f"runtime.device: {device!r} is not auto, cpu, cuda or cuda:N"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"runtime.device: {device!r} but this machine has no CUDA device; use auto or cpu"
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            return f"runtime.device: {device!r} but this machine has {torch.cuda.device_count()} CUDA devices"
    return None


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): there bf16 autocast
    trains and infers faster at the same quality (docs/RESULTS.md); without it PyTorch
    emulates bf16 and it is slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no cheap way to know, so the safe choice
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def runs_on_cuda(device: str) -> bool:
    """Whether runtime.device ``device`` is (or, for auto, picks) a CUDA device."""
    if device.startswith("cuda"):
        return True
    if device == "auto":
        import torch  # only to know what "auto" will pick; "cpu" needs no torch here

        return torch.cuda.is_available()
    return False


def auto_precision(device: str) -> str:
    """``runtime.precision = auto``: bf16 on a CPU with native bf16, where it measured faster at the
    same quality; fp32 on a GPU, where an H200 measured bf16 no faster for these networks (their
    steps are launch-bound; docs/RESULTS.md) and bf16 is a choice for its halved memory; else fp32."""
    if runs_on_cuda(device):
        return "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def auto_memory_format(device: str, precision: str) -> str:
    """``runtime.memory_format = auto``: channels_last on a CPU at fp32, where the lite0 networks'
    training steps ran 1.1-1.3x faster in it (an AVX2 EPYC without native bf16,
    where auto's precision is fp32; other CPUs at fp32, ARM included, were not measured);
    contiguous at bf16 on a CPU, where a DeepLab step measured slower in channels_last, and on a
    GPU, where it helped one size and slowed another (docs/RESULTS.md). ``precision`` is resolved
    (not auto)."""
    if runs_on_cuda(device):
        return "contiguous"
    return "channels_last" if precision == "fp32" else "contiguous"


SALIENCY_DATA_HELP = (
    "set saliency.checkpoint to a trained PiCANet (e.g. the public checkpoint, encoder vgg16) or "
    "saliency.train_root (and saliency.val_root) to a saliency set with images/ and masks/ "
    "(e.g. DUTS-TR from the DUTS data set's page; README 'Saliency for your own photos')"
)


def _type_problems(values: Any, prefix: str = "") -> list[str]:
    problems = []
    for name, kind in _field_types(type(values)).items():
        key, value = f"{prefix}.{name}" if prefix else name, getattr(values, name)
        if _is_group(kind):
            if not isinstance(value, kind):
                problems.append(f"{key}: expected a {kind.__name__}")
            else:
                problems += _type_problems(value, key)
        elif not _type_ok(value, kind):
            problems.append(f"{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return problems


def validate(cfg: Config, stages: typing.Iterable[str] = ()) -> Config:
    """Check every setting by its declaration; raise one :class:`ConfigError` listing all problems.

    ``stages`` are the stages about to run: paths they need must exist.
    """
    stages = set(stages)
    # types, including sections and groups replaced wholesale by a caller
    problems = _type_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))

    for section in SECTIONS:
        for key, value, info in _walk(getattr(cfg, section), section):
            problems += _rule_problems(key, value, info["rules"])
            kind = info["rules"].get("path")
            if kind and value:
                path = cfg.path(value)
                if kind == "file" and not path.is_file():
                    problems.append(f"{key}: {path} does not exist")
                # the saliency sets are read by TRAIN_SALIENCY only, which a ready network skips
                needed = section != "saliency" or ("train_saliency" in stages and not cfg.saliency.checkpoint)
                if kind == "dir" and not path.is_dir() and needed:
                    problems.append(
                        f"{key}: {path} is not a folder" + (f"; {SALIENCY_DATA_HELP}" if section == "saliency" else "")
                    )
    device_problem = _device_problem(cfg.runtime.device)
    if device_problem:
        problems.append(device_problem)
    if cfg.runtime.precision == "fp16" and cfg.runtime.device == "cpu":
        problems.append("runtime.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if cfg.runtime.precision == "auto" and not device_problem:
        # resolved here, once, so that records, config.json and every process see the arithmetic used
        cfg.runtime.precision = auto_precision(cfg.runtime.device)
    if cfg.runtime.memory_format == "auto" and not device_problem:
        cfg.runtime.memory_format = auto_memory_format(cfg.runtime.device, cfg.runtime.precision)
    experiment = cfg.runtime.experiment
    if experiment and (experiment.startswith(".") or any(c in experiment for c in "/\\:")):
        problems.append(f"runtime.experiment: {experiment!r} cannot name a folder (no slashes, no leading dot)")
    if cfg.synthetic.max_size < cfg.synthetic.min_size:
        problems.append("synthetic.max_size: smaller than synthetic.min_size")
    for section in ("classifier", "deeplab"):
        sub = getattr(cfg, section)
        if not 0 < sub.scale_min <= sub.scale_max:
            problems.append(f"{section}.scale_min/scale_max: need 0 < scale_min <= scale_max")
    if cfg.guide.split == "clusters" and cfg.guide.rule != "region":
        problems.append(
            f"guide.split clusters splits the regions of the region rule; guide.rule is {cfg.guide.rule} "
            "(set guide.rule region or guide.split crf)"
        )
    band = cfg.guide.uncertain_saliency
    if band and not (len(band) == 2 and band[0] < band[1]):
        problems.append(f"guide.uncertain_saliency: {band} is not [low, high] with low < high (or [] for off)")
    # the settings that give DeepLab trained starting weights other than ImageNet's
    starts = [
        key
        for key, chosen in (
            ("deeplab.backbone_from_classifier", cfg.deeplab.backbone_from_classifier),
            ("deeplab.init_checkpoint", bool(cfg.deeplab.init_checkpoint)),
            ("deeplab.segmentation_pretrained", cfg.deeplab.segmentation_pretrained),
        )
        if chosen
    ]
    if cfg.deeplab.frozen_stride and not (cfg.deeplab.pretrained_backbone or starts):
        problems.append(
            f"deeplab.frozen_stride {cfg.deeplab.frozen_stride} keeps the early layers' starting weights, "
            f"but deeplab.pretrained_backbone is off and nothing else gives trained ones: they would stay "
            f"random (set frozen_stride 0)"
        )
    if cfg.deeplab.backbone_from_classifier:
        if cfg.classifier.backbone != cfg.deeplab.backbone:
            problems.append(
                f"deeplab.backbone_from_classifier: classifier.backbone is {cfg.classifier.backbone}, "
                f"deeplab.backbone {cfg.deeplab.backbone}; they must be the same backbone"
            )
    if len(starts) > 1:
        problems.append(f"{' and '.join(starts)} each give DeepLab's starting weights; set one of them")
    if len(set(cfg.class_names)) != len(cfg.class_names):
        problems.append("class_names: names repeat")
    if any(not name.strip() or any(c.isspace() for c in name) for name in cfg.class_names):
        problems.append(f"class_names: a name is empty or holds a space: {cfg.class_names}")

    # paths that must exist for the stages about to run
    if cfg.dataset.kind != "synthetic" and not cfg.path(cfg.dataset.root).is_dir():
        problems.append(f"dataset.root: {cfg.path(cfg.dataset.root)} is not a folder")
    # saliency for real photos is chosen, never defaulted to the synthetic shapes
    if (
        "train_saliency" in stages
        and cfg.dataset.kind != "synthetic"
        and not cfg.saliency.checkpoint
        and not cfg.saliency.train_root
    ):
        problems.append(
            f"saliency: the {cfg.dataset.kind} data set needs a saliency network for real photos: " + SALIENCY_DATA_HELP
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def _load_group(target: Any, saved: dict, prefix: str, problems: list[str]) -> None:
    """Copy a section or group of a saved config.json into ``target``; what is unknown goes to ``problems``."""
    types = _field_types(type(target))
    for name, item in saved.items():
        key, kind = f"{prefix}.{name}", types.get(name)
        if _is_group(kind) and isinstance(item, dict):
            _load_group(getattr(target, name), item, key, problems)
        elif key in RENAMED:
            problems.append(_renamed(key))
        elif kind is None:
            problems.append(f"{key}: unknown setting")
        elif _is_group(kind):
            problems.append(f"{key}: expected a group of settings ({', '.join(declared(kind))}), got {item!r}")
        else:
            setattr(
                target,
                name,
                float(item) if kind is float and isinstance(item, int) and not isinstance(item, bool) else item,
            )


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """A configuration saved as config.json (runs/config.json, runs/<stage>/config.json), then
    ``section.key=value`` overrides. Unknown keys in the file are errors (a renamed one names its new
    name), missing ones keep defaults."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--config {path}: cannot read it as JSON ({err})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of sections")
    cfg = Config(preset=str(saved.get("preset", "demo")))
    problems: list[str] = []
    for name, value in saved.items():
        if name in ("preset",):
            continue
        if name == "class_names":
            cfg.class_names = value
        elif name in SECTIONS and isinstance(value, dict):
            _load_group(getattr(cfg, name), value, name, problems)
        else:
            problems.append(f"{name}: unknown section")
    if problems:
        raise ConfigError(f"--config {path}:\n  " + "\n  ".join(problems))
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg
