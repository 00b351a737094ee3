"""TRAIN_SALIENCY: train PiCANet on a class-agnostic saliency set.

Deep supervision: binary cross-entropy of every side output against the mask max-pooled to its
size, weighted 0.5 (coarse) to 1.0 (finest) as the public checkpoint was trained. Every
``val_every`` steps: max F-measure and MAE on the validation folder to tensorboard, with sample
images; best (by max F) and last checkpoints under checkpoints/saliency/, resumed from on rerun.
Nothing to do when ``saliency.checkpoint`` names a ready network.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common import backbones, distributed, metrics, runtime, training
from saliency.data import SaliencyPairs, deep_supervision_targets, find_pairs
from saliency.picanet import PiCANet

STAGE = "train_saliency"
CHECKPOINTS = "saliency"


def side_output_weights(count: int) -> list[float]:
    """Coarse to fine; the finest three get 1.0, 0.8, 0.8 and the rest 0.5 (the spec's recipe)."""
    finest_first = [1.0, 0.8, 0.8] + [0.5] * max(0, count - 3)
    return list(reversed(finest_first[:count]))


def deep_supervision_loss(side_outputs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    targets = deep_supervision_targets(mask, [tuple(o.shape[-2:]) for o in side_outputs])
    weights = side_output_weights(len(side_outputs))
    return sum(
        w * F.binary_cross_entropy(o.clamp(1e-6, 1 - 1e-6), t) for w, o, t in zip(weights, side_outputs, targets)
    )


def data_roots(cfg):
    """(train pairs, val pairs): the configured folders, or the synthetic saliency set."""
    settings = cfg.saliency
    if not settings.train_root:
        from datasets import synthetic

        train_dir, val_dir = synthetic.saliency_roots(cfg)
        return find_pairs(train_dir, "train"), find_pairs(val_dir, "val")
    train_pairs = find_pairs(cfg.path(settings.train_root), "train")
    if settings.val_root:
        return train_pairs, find_pairs(cfg.path(settings.val_root), "val")
    try:  # DUTS keeps its test split beside the training split
        return train_pairs, find_pairs(cfg.path(settings.train_root), "val")
    except FileNotFoundError:
        held_out = max(1, len(train_pairs) // 10)
        order = np.random.default_rng(cfg.runtime.seed).permutation(len(train_pairs))
        print(f"no saliency.val_root: holding out {held_out} training images for validation")
        return [train_pairs[i] for i in order[held_out:]], [train_pairs[i] for i in order[:held_out]]


def predict(model: PiCANet, images: torch.Tensor) -> torch.Tensor:
    """Saliency probability (B, 1, S, S) of RGB [0, 1] images at the network's size."""
    return model(model.prepare(images))[-1]


def validate(model: PiCANet, loader: DataLoader, device, precision: str = "fp32") -> tuple[dict, list]:
    """Max F and MAE at each image's own size; a few (image, truth, prediction) samples."""
    was_training = model.training
    model.eval()
    scores = metrics.SaliencyScores()
    samples = []
    with torch.no_grad(), runtime.autocast(device, precision):
        for images, masks in loader:
            probs = predict(model, runtime.to_device(images, device)).float().cpu()
            for image, mask, prob in zip(images, masks, probs):
                full = F.interpolate(prob[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                scores.update(full.numpy(), mask[0].numpy())
                if len(samples) < 4:
                    samples.append((image, mask, prob))
    model.train(was_training)
    return scores.result(), samples


def _sample_grid(samples) -> torch.Tensor:
    rows = []
    for image, mask, prob in samples:
        size = image.shape[-2:]
        mask = F.interpolate(mask[None], size=size, mode="nearest")[0]
        rows.append(torch.cat([image, mask.expand(3, -1, -1), prob.expand(3, -1, -1)], dim=2))
    return torch.cat(rows, dim=1)


def _collate_val(batch):
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


def _freeze_encoder_batchnorm(model: PiCANet) -> None:
    # kept for benchmarks/precision_speed.py, which builds the stage's train mode itself
    model.freeze_encoder_batchnorm()


def make_optimizer(model: PiCANet, settings):
    """Adam or SGD with the encoder and decoder at their own rates, and the step schedule."""
    groups = [
        {"params": list(model.encoder.parameters()), "lr": settings.lr_encoder},
        {"params": list(model.decoder.parameters()), "lr": settings.lr_decoder},
    ]
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=settings.momentum, weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.Adam(groups, weight_decay=settings.weight_decay)
    return optimizer, training.step_schedule(optimizer, settings.lr_step, 0.1)


def supervision_loss(network, batch, device) -> torch.Tensor:
    """Deep-supervision loss of one batch; ``network`` may be the DDP wrapper of a PiCANet."""
    images, masks = batch
    model = getattr(network, "module", network)
    side_outputs = network(model.prepare(runtime.to_device(images, device)))
    # binary cross-entropy of probabilities is refused under autocast (unsafe in float16): scored in float32
    with torch.autocast(device.type, enabled=False):
        return deep_supervision_loss([o.float() for o in side_outputs], runtime.to_device(masks, device))


def run(cfg, *, stop_after: int | None = None) -> dict:
    """Train (or resume) PiCANet; returns {"max_F", "MAE", "steps"} ({} with saliency.checkpoint).
    ``stop_after``: stop once this many steps are done, as an interruption would."""
    settings = cfg.saliency
    if settings.checkpoint:
        print(f"saliency.checkpoint = {settings.checkpoint}: using that network, nothing to train")
        return {}
    device = runtime.select_device(cfg.runtime.device)
    distributed.init_process_group_if_needed(device)
    device = distributed.device_for_rank(device)
    train_pairs, val_pairs = data_roots(cfg)
    if distributed.is_main():
        print(f"saliency training: {len(train_pairs)} images, validation: {len(val_pairs)}")
    model = PiCANet(encoder=settings.encoder, paper_attention=settings.paper_attention)
    if settings.pretrained:
        model.load_imagenet(backbones.resolved_weights_path(cfg, settings.weights_path))
    model.to(device)
    optimizer, scheduler = make_optimizer(model, settings)
    describe = {
        "encoder": settings.encoder,
        "paper_attention": settings.paper_attention,
        "input_size": settings.input_size,
    }
    val_loader = training.eval_loader(
        SaliencyPairs(val_pairs, settings.input_size, train=False),
        batch_size=settings.batch_size,
        num_workers=cfg.runtime.num_workers,
        device=device,
        seed=cfg.runtime.seed,
        collate_fn=_collate_val,
    )
    precision = cfg.runtime.precision
    # a second validation set of other objects shows what the first one cannot: how the network
    # does on kinds it was not trained on; the best checkpoint is still chosen on the first
    second_loader = None
    if settings.second_val_root:
        second_loader = training.eval_loader(
            SaliencyPairs(find_pairs(cfg.path(settings.second_val_root), "val"), settings.input_size, train=False),
            batch_size=settings.batch_size,
            num_workers=cfg.runtime.num_workers,
            device=device,
            seed=cfg.runtime.seed,
            collate_fn=_collate_val,
        )

    def validate_and_log(net, step: int, writer) -> dict:
        result, samples = validate(net, val_loader, device, precision)
        writer.add_scalar("val/max_F", result["max_F"], step)
        writer.add_scalar("val/MAE", result["MAE"], step)
        writer.add_image("val/image_truth_prediction", _sample_grid(samples), step)
        line = f"step {step}: val max F {result['max_F']:.3f}, MAE {result['MAE']:.3f}"
        if second_loader is not None:
            second, _ = validate(net, second_loader, device, precision)
            writer.add_scalar("val_second/max_F", second["max_F"], step)
            writer.add_scalar("val_second/MAE", second["MAE"], step)
            result = {**result, "second_max_F": second["max_F"], "second_MAE": second["MAE"]}
            line += f"; second val max F {second['max_F']:.3f}, MAE {second['MAE']:.3f}"
        print(line, flush=True)
        return result

    def train_mode(net) -> None:
        net.train()
        if settings.freeze_encoder_bn:
            net.freeze_encoder_batchnorm()

    spec = training.TrainingSpec(
        stage=STAGE,
        checkpoints=CHECKPOINTS,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        steps=settings.steps,
        val_every=settings.val_every,
        batch_size=min(settings.train_batch_size, len(train_pairs)),
        samples=SaliencyPairs(train_pairs, settings.input_size, train=True, seed=cfg.runtime.seed),
        loss=supervision_loss,
        metric="max_F",
        describe=describe,
        resume_keys=tuple(describe),
        validate=validate_and_log,
        train_mode=train_mode,
        grad_clip=settings.grad_clip,
        memory_format=cfg.runtime.memory_format,
    )
    outcome = training.fit(cfg, spec, device=device, stop_after=stop_after)
    best = outcome.best
    if not outcome.trained:
        print(f"saliency network already trained for {outcome.step} steps; best val max F {best['max_F']:.3f}")
    elif distributed.is_main() and "step" in best:
        print(f"saliency: best val max F {best['max_F']:.3f}, MAE {best['MAE']:.3f} at step {best['step']}")
    summary = {"max_F": best["max_F"], "MAE": best.get("MAE"), "steps": outcome.step}
    if "second_max_F" in best:
        summary.update(second_max_F=best["second_max_F"], second_MAE=best["second_MAE"])
    return summary
