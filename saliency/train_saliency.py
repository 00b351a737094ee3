"""TRAIN_SALIENCY: train PiCANet on a class-agnostic saliency set.

Deep supervision: binary cross-entropy of every side output against the mask max-pooled to its
size, weighted 0.5 (coarse) to 1.0 (finest) as the public checkpoint was trained. Every
``val_every`` steps: max F-measure and MAE on the validation folder to tensorboard, with sample
images; best (by max F) and last checkpoints under checkpoints/saliency/, resumed from on rerun.
Nothing to do when ``saliency.checkpoint`` names a ready network.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from common import board, checkpoint, metrics, runtime
from common.layout import Layout
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
    return sum(w * F.binary_cross_entropy(o.clamp(1e-6, 1 - 1e-6), t)
               for w, o, t in zip(weights, side_outputs, targets))


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


def validate(model: PiCANet, loader: DataLoader, device) -> tuple[dict, list]:
    """Max F and MAE at each image's own size; a few (image, truth, prediction) samples."""
    was_training = model.training
    model.eval()
    scores = metrics.SaliencyScores()
    samples = []
    with torch.no_grad():
        for images, masks in loader:
            probs = predict(model, images.to(device)).cpu()
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
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def run(cfg) -> dict:
    settings = cfg.saliency
    if settings.checkpoint:
        print(f"saliency.checkpoint = {settings.checkpoint}: using that network, nothing to train")
        return {}
    device = runtime.select_device(cfg.runtime.device)
    layout = Layout(cfg)
    train_pairs, val_pairs = data_roots(cfg)
    print(f"saliency training: {len(train_pairs)} images, validation: {len(val_pairs)}")
    model = PiCANet(encoder=settings.encoder, paper_attention=settings.paper_attention)
    if settings.pretrained:
        model.load_imagenet(settings.weights_path)
    model.to(device)
    encoder_params = list(model.encoder.parameters())
    decoder_params = list(model.decoder.parameters())
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD([{"params": encoder_params, "lr": settings.lr_encoder},
                                     {"params": decoder_params, "lr": settings.lr_decoder}],
                                    momentum=settings.momentum, weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.Adam([{"params": encoder_params, "lr": settings.lr_encoder},
                                      {"params": decoder_params, "lr": settings.lr_decoder}],
                                     weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=0.1)

    last_path, best_path = layout.checkpoint(CHECKPOINTS, "last"), layout.checkpoint(CHECKPOINTS, "best")
    describe = {"encoder": settings.encoder, "paper_attention": settings.paper_attention,
                "input_size": settings.input_size}
    step, best = 0, {"max_F": float("-inf")}
    if last_path.exists() and not cfg.runtime.overwrite:
        state = checkpoint.load_training_state(last_path, model=model, optimizer=optimizer,
                                               scheduler=scheduler, map_location=device)
        step, best = state["step"], state["extra"].get("best", best)
        print(f"resuming saliency training from step {step} ({last_path})")
    if step >= settings.steps:
        print(f"saliency network already trained for {step} steps; best val max F {best['max_F']:.3f}")
        return {"max_F": best["max_F"], "MAE": best.get("MAE"), "steps": step}

    workers = cfg.runtime.num_workers
    train_loader = DataLoader(SaliencyPairs(train_pairs, settings.input_size, train=True),
                              batch_size=min(settings.train_batch_size, len(train_pairs)), shuffle=True,
                              drop_last=True, num_workers=workers, worker_init_fn=runtime.worker_seed,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(SaliencyPairs(val_pairs, settings.input_size, train=False),
                            batch_size=settings.batch_size, num_workers=workers, collate_fn=_collate_val)
    batches = (batch for _ in itertools.count() for batch in train_loader)
    writer = board.open_writer(cfg, STAGE)
    model.train()
    if settings.freeze_encoder_bn:
        _freeze_encoder_batchnorm(model)
    progress = tqdm(range(step, settings.steps), initial=step, total=settings.steps, desc=STAGE)
    for step in progress:
        images, masks = next(batches)
        side_outputs = model(model.prepare(images.to(device)))
        loss = deep_supervision_loss(side_outputs, masks.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        if done % 10 == 0 or done == settings.steps:
            writer.add_scalar("train/loss", loss.item(), done)
            writer.add_scalar("train/lr_decoder", optimizer.param_groups[1]["lr"], done)
            progress.set_postfix(loss=f"{loss.item():.3f}")
        if done % settings.val_every == 0 or done == settings.steps:
            result, samples = validate(model, val_loader, device)
            if settings.freeze_encoder_bn:
                _freeze_encoder_batchnorm(model)
            writer.add_scalar("val/max_F", result["max_F"], done)
            writer.add_scalar("val/MAE", result["MAE"], done)
            writer.add_image("val/image_truth_prediction", _sample_grid(samples), done)
            progress.write(f"step {done}: val max F {result['max_F']:.3f}, MAE {result['MAE']:.3f}")
            if result["max_F"] > best["max_F"]:
                best = {**result, "step": done}
                checkpoint.save_training_state(best_path, model=model, step=done,
                                               extra={**describe, "best": best})
            checkpoint.save_training_state(last_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                           step=done, extra={**describe, "best": best})
    writer.close()
    print(f"saliency: best val max F {best['max_F']:.3f}, MAE {best['MAE']:.3f} at step {best['step']}")
    return {"max_F": best["max_F"], "MAE": best["MAE"], "steps": settings.steps}
