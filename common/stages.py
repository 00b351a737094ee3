"""The one list of stages: flag, name, module, what each writes, what its outputs depend on, and the
rows it adds to the closing table. main.py, the provenance records and the benchmarks read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str  # the one name of the stage everywhere: --stages, runs/<name>/, records
    flag: str  # the switch at the top of main.py
    module: str  # module with run(cfg) and, optionally, preflight(cfg, stages)
    # where its outputs live: a tmp/ folder (per-image stages) or a checkpoints/ folder (trainings)
    tmp_folder: str | None = None
    checkpoint_folder: str | None = None
    # config keys ("section", "section.key", a group "section.group" or "section.group.key") its
    # outputs depend on; keys in `ignores` do not change any output (batch sizes, report sizes,
    # training lengths that resume)
    depends_on: tuple[str, ...] = ()
    ignores: tuple[str, ...] = ()
    # which data its outputs depend on: "dataset" (its settings, class names and every file's size and
    # modification time) or "saliency_data" (TRAIN_SALIENCY's folders)
    data: str | None = "dataset"
    # stages whose outputs it reads, given the config (a stage may not need one, e.g. a ready network)
    upstream: Callable = field(default=lambda cfg: ())
    # (summary key, label) rows of the closing table
    table: tuple[tuple[str, str], ...] = ()
    # whether the stage has anything to do under this config (no training when a ready network is named)
    active: Callable = field(default=lambda cfg: True)
    # a training's checkpoint that the next stage reads ("best" or "last"), given the config
    hands_on: Callable = field(default=lambda cfg: "best")

    @property
    def trains(self) -> bool:
        return self.checkpoint_folder is not None


STAGES: tuple[Stage, ...] = (
    Stage(
        "train_saliency",
        "TRAIN_SALIENCY",
        "saliency.train_saliency",
        checkpoint_folder="saliency",
        depends_on=("saliency", "runtime.seed", "runtime.precision"),
        ignores=(
            "saliency.threshold",
            "saliency.batch_size",
            "saliency.minmax_normalise",
            "saliency.steps",
            "saliency.val_every",
            "saliency.checkpoint",
            "saliency.second_val_root",
            "saliency.scales",
        ),
        data="saliency_data",
        active=lambda cfg: not cfg.saliency.checkpoint,
        table=(("max_F", "saliency max F (val)"), ("MAE", "saliency MAE (val)")),
    ),
    Stage(
        "create_saliency",
        "CREATE_SALIENCY",
        "saliency.make_saliency",
        tmp_folder="saliency",
        depends_on=(
            "saliency.checkpoint",
            "saliency.encoder",
            "saliency.input_size",
            "saliency.scales",
            "saliency.minmax_normalise",
            "saliency.paper_attention",
            "runtime.precision",
        ),
        upstream=lambda cfg: () if cfg.saliency.checkpoint else ("train_saliency",),
    ),
    Stage(
        "train_seed",
        "TRAIN_SEED",
        "classifier.train_classifier",
        checkpoint_folder="classifier",
        depends_on=("classifier", "runtime.seed", "runtime.precision"),
        ignores=("classifier.steps", "classifier.val_every"),
        table=(("mAP", "classifier mAP (val)"),),
    ),
    Stage(
        "create_attention",
        "CREATE_ATTENTION",
        "attention.make_cam",
        tmp_folder="attention",
        depends_on=("attention", "runtime.precision"),
        ignores=("attention.seed_thresholds", "attention.batch_size"),
        upstream=lambda cfg: ("train_seed",),
        table=(("seed_mIoU", "CAM seed mIoU (train)"),),
    ),
    Stage(
        "create_guide",
        "CREATE_GUIDE",
        "guide.make_guide",
        tmp_folder="guide",
        depends_on=("guide", "saliency.threshold", "attention.threshold"),
        ignores=("guide.workers", "guide.previews"),
        # guide.split clusters reads the classifier's features
        upstream=lambda cfg: (
            ("create_saliency", "create_attention") + (("train_seed",) if cfg.guide.split == "clusters" else ())
        ),
        table=(("mIoU", "pseudo-label mIoU (train)"),),
    ),
    Stage(
        "train_deeplab",
        "TRAIN_DEEPLAB",
        "deeplab.train_deeplab",
        checkpoint_folder="deeplab",
        depends_on=("deeplab", "runtime.seed", "runtime.precision"),
        ignores=("deeplab.steps", "deeplab.val_every"),
        upstream=lambda cfg: (
            (() if cfg.deeplab.gt_percentage >= 100 else ("create_guide",))
            + (("train_seed",) if cfg.deeplab.backbone_from_classifier else ())
        ),
        hands_on=lambda cfg: cfg.eval.checkpoint,
        table=(("val_mIoU", "DeepLab best val mIoU while training"),),
    ),
    Stage(
        "eval_deeplab",
        "EVAL_DEEPLAB",
        "deeplab.eval_deeplab",
        tmp_folder="deeplab",
        depends_on=("eval", "runtime.precision"),
        ignores=("eval.batch_size", "eval.overlays"),
        upstream=lambda cfg: ("train_deeplab",),
        table=(("mIoU", "DeepLab mIoU (val)"),),
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = tuple(stage.name for stage in STAGES)


def get(name: str) -> Stage:
    if name not in BY_NAME:
        raise KeyError(f"unknown stage {name!r} (stages: {', '.join(NAMES)})")
    return BY_NAME[name]
