"""PiCANet (Liu, Han & Yang, CVPR 2018), compatible with the public PyTorch checkpoint.

``PiCANet(encoder="vgg16")`` has exactly the tensor names and shapes of the public
``<N>epo_<M>step.ckpt`` state dict (see ../shared/spec/picanet.md and tests/fixtures), loads it with
``strict=True`` and computes the function it was trained as, including the row-major reshape of
the local attention. ``encoder="efficientnet_lite0"`` puts the same decoder design (global
attention in the first two cells, local attention in the next ones, deep supervision) on the
feature pyramid of an EfficientNet-Lite0 with offline ImageNet weights, narrow enough to train on a
CPU in minutes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import backbones
from common.backbone_parts import FrozenBatchNormMixin
from common.errors import InputError

ENCODERS = backbones.names(for_="saliency")
# the decoder on each encoder's taps (whose channels the registry declares), one cell per tap:
# (cell widths, None = the taps' channels as in the checkpoint; cell outputs; attention modes;
#  ReNet hidden width; local-attention hidden width). A new saliency encoder needs a line here too.
DECODERS = {
    "vgg16": (None, (512, 512, 256, 128, 64, 1), "GGLLLC", 256, 128),
    "efficientnet_lite0": ((64, 64, 48, 32, 24), (64, 48, 32, 24, 1), "GGLLC", 64, 32),
}


# ------------------------------------------------------------------------------------------------
# attention modules
# ------------------------------------------------------------------------------------------------
class ReNet(nn.Module):
    """Two bidirectional LSTMs: along the width of every row, then along the height of every
    column of the result; a 1x1 conv to ``out_channels`` attention logits per position."""

    def __init__(self, in_channels: int, out_channels: int = 100, hidden: int = 256) -> None:
        super().__init__()
        self.vertical = nn.LSTM(input_size=in_channels, hidden_size=hidden, batch_first=True, bidirectional=True)
        self.horizontal = nn.LSTM(input_size=2 * hidden, hidden_size=hidden, batch_first=True, bidirectional=True)
        self.conv = nn.Conv2d(2 * hidden, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        # every row is an independent sequence: run them all in one LSTM call
        rows = x.permute(0, 2, 3, 1).reshape(batch * height, width, channels)
        rows, _ = self.vertical(rows)  # (B*H, W, 2h)
        features = rows.shape[-1]
        columns = rows.reshape(batch, height, width, features).permute(0, 2, 1, 3)
        columns, _ = self.horizontal(columns.reshape(batch * width, height, features))  # (B*W, H, 2h)
        result = columns.reshape(batch, width, height, features).permute(0, 3, 2, 1)  # (B, 2h, H, W)
        return self.conv(result.contiguous())


def context_grid(size: int, points: int = 10) -> torch.Tensor:
    """Row (or column) indices of the global context grid: evenly spread from the first to the
    last pixel. On the checkpoint's 28 x 28 maps that is 0, 3, ..., 27, exactly what F.unfold with
    a 10 x 10 kernel and dilation 3 takes; other sizes (the lite0 encoder) spread the same way."""
    return torch.linspace(0, size - 1, points).round().long()


class GlobalAttention(nn.Module):
    """Every position attends to the same 10 x 10 grid of context points."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.renet = ReNet(channels, 100, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        weights = F.softmax(self.renet(x), dim=1).reshape(batch, 100, height * width)
        rows, cols = context_grid(height).to(x.device), context_grid(width).to(x.device)
        context = x[:, :, rows][:, :, :, cols].reshape(batch, channels, 100)  # row-major grid
        return torch.bmm(context, weights).reshape(batch, channels, height, width)


NEIGHBOURS = 49  # the 7 x 7 neighbourhood of local attention, dilation 2 (padding 6 keeps the size)


def attend_unfolded(x: torch.Tensor, weights: torch.Tensor, paper_order: bool) -> torch.Tensor:
    """Local attention as the original code computes it: every neighbourhood unfolded, (B, C*49, H*W).

    ``paper_order=False`` reshapes the unfolded neighbourhoods row-major to (B, C, H*W, 49) without a
    transpose, and the weights (B, 49, H, W) to (B, 1, H*W, 49) the same way."""
    batch, channels, height, width = x.shape
    patches = F.unfold(x, kernel_size=7, dilation=2, padding=6)
    if paper_order:
        patches = patches.reshape(batch, channels, NEIGHBOURS, height * width).transpose(2, 3)
        weights = weights.reshape(batch, NEIGHBOURS, height * width).transpose(1, 2)[:, None]
    else:
        patches = patches.reshape(batch, channels, height * width, NEIGHBOURS)
        weights = weights.reshape(batch, 1, height * width, NEIGHBOURS)
    return (patches * weights).sum(dim=3).reshape(batch, channels, height, width)


def attend_by_offsets(x: torch.Tensor, weights: torch.Tensor, paper_order: bool) -> torch.Tensor:
    """The same sums as :func:`attend_unfolded`, one neighbour offset at a time, channels last.

    The unfolded tensor is 49 times the feature map (157 MB at 56 x 56 x 32, batch 8) and its
    products, copies and their backward passes were a third of a lite0 PiCANet's training step on
    the CPU. Here each offset's product is one map-sized tensor. Both reshapes of the original
    order permute the flat (offset, position) products the same way, so position p of a channel
    sums the 49 products at flat indices 49p .. 49p + 48 of the offsets' products laid end to end;
    when 49 divides H*W each such group lies within one offset (every map side a multiple of 7:
    the 224-pixel inputs of both encoders). Other sizes in the original order must use
    :func:`attend_unfolded`."""
    batch, channels, height, width = x.shape
    positions = height * width
    if not paper_order and positions % NEIGHBOURS:
        raise ValueError(f"the original order needs 49 to divide the positions, not {height} x {width}")
    padded = F.pad(x, (6, 6, 6, 6)).permute(0, 2, 3, 1)  # (B, H+12, W+12, C), a view
    summed, groups = None, []
    for offset in range(NEIGHBOURS):
        dy, dx = 2 * (offset // 7), 2 * (offset % 7)
        product = weights[:, offset, :, :, None] * padded[:, dy : dy + height, dx : dx + width, :]
        if paper_order:
            summed = product if summed is None else summed + product
        else:
            groups.append(product.reshape(batch, positions // NEIGHBOURS, NEIGHBOURS, channels).sum(2))
    out = summed if paper_order else torch.cat(groups, 1).reshape(batch, height, width, channels)
    out = out.permute(0, 3, 1, 2)  # channels-last strides
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


class LocalAttention(nn.Module):
    """Each position attends to its 7 x 7 neighbourhood (dilation 2).

    ``paper_order=False`` (default, and what the public checkpoint was trained with) reshapes the
    unfolded neighbourhoods row-major to (B, C, H*W, 49) without a transpose, pairing weights with
    values the way the original code did; ``True`` pairs each position with its own neighbourhood,
    as the paper intends (for new training only)."""

    def __init__(self, channels: int, paper_order: bool = False, hidden: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size=7, dilation=2, padding=6)
        self.conv2 = nn.Conv2d(hidden, NEIGHBOURS, kernel_size=1)
        self.paper_order = paper_order
        self.by_offsets = True  # False: the unfolded sums everywhere (for speed comparisons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.conv2(self.conv1(x)), dim=1)  # (B, 49, H, W)
        if self.by_offsets and (self.paper_order or (x.shape[2] * x.shape[3]) % NEIGHBOURS == 0):
            return attend_by_offsets(x, weights, self.paper_order)
        return attend_unfolded(x, weights, self.paper_order)


def use_unfolded_local_attention(model: nn.Module) -> int:
    """Every :class:`LocalAttention` in ``model`` back on the unfolded sums (for speed comparisons);
    returns how many were changed."""
    modules = [module for module in model.modules() if isinstance(module, LocalAttention) and module.by_offsets]
    for module in modules:
        module.by_offsets = False
    return len(modules)


# ------------------------------------------------------------------------------------------------
# decoder
# ------------------------------------------------------------------------------------------------
class DecoderCell(nn.Module):
    """One decoder cell: fuse the encoder tap with the previous cell, attend, predict a side output.

    Mode "G"/"L": global/local attention, ``conv2`` fuses features and attended features into
    ``out_channels``, ``conv3`` gives the side output. Mode "C" (last cell): ``conv2`` gives it.
    """

    def __init__(
        self,
        *,
        en_channels: int,
        dec_channels: int,
        width: int,
        out_channels: int,
        mode: str,
        renet_hidden: int = 256,
        local_hidden: int = 128,
        paper_attention: bool = False,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.bn_en = nn.BatchNorm2d(en_channels)
        self.conv1 = nn.Conv2d(en_channels + dec_channels, width, kernel_size=1)
        if mode == "G":
            self.picanet = GlobalAttention(width, renet_hidden)
        elif mode == "L":
            self.picanet = LocalAttention(width, paper_attention, local_hidden)
        if mode == "C":
            self.conv2 = nn.Conv2d(width, 1, kernel_size=1)
        else:
            self.conv2 = nn.Conv2d(2 * width, out_channels, kernel_size=1)
            self.bn_feature = nn.BatchNorm2d(out_channels)
            self.conv3 = nn.Conv2d(out_channels, 1, kernel_size=1)

    def forward(self, en: torch.Tensor, dec: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if dec is None:
            dec = en
        elif dec.shape[2] * 2 == en.shape[2]:
            dec = F.interpolate(dec, scale_factor=2, mode="bilinear", align_corners=True)
        elif dec.shape[2:] != en.shape[2:]:
            raise ValueError(
                f"decoder sizes do not fit: encoder {tuple(en.shape[2:])}, previous cell {tuple(dec.shape[2:])}"
            )
        en = F.relu(self.bn_en(en))
        fused = F.relu(self.conv1(torch.cat([en, dec], dim=1)))
        if self.mode == "C":
            out = self.conv2(fused)
            return out, torch.sigmoid(out)
        attended = self.picanet(fused)
        out = F.relu(self.bn_feature(self.conv2(torch.cat([fused, attended], dim=1))))
        return out, torch.sigmoid(self.conv3(out))


# ------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------
class PiCANet(FrozenBatchNormMixin, nn.Module):
    """Saliency network: encoder taps -> six (VGG16) or five (lite0) decoder cells.

    ``forward`` takes images prepared by :meth:`prepare` and returns the side outputs, coarse to
    fine, each a sigmoid map with one channel; the last one is the saliency map (at input size).
    """

    frozen_batchnorm_scope = "encoder"

    def __init__(self, *, encoder: str = "vgg16", paper_attention: bool = False) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"saliency.encoder {encoder!r} is not one of {', '.join(ENCODERS)}")
        self.encoder_name = encoder
        # encoder before decoder, and no weights yet (load_imagenet): the order of random
        # initialisation that seeded runs and tests reproduce
        self.encoder = backbones.build(encoder, for_="saliency")
        en = list(backbones.form(encoder, for_="saliency").channels)
        widths, outs, modes, hidden, local_hidden = DECODERS[encoder]
        widths = en if widths is None else list(widths)
        outs = list(outs)
        dec_in = [en[0]] + outs[:-1]
        self.mean, self.std = backbones.normalisation(encoder)
        self.decoder = nn.ModuleList(
            DecoderCell(
                en_channels=e,
                dec_channels=d,
                width=w,
                out_channels=o,
                mode=m,
                renet_hidden=hidden,
                local_hidden=local_hidden,
                paper_attention=paper_attention,
            )
            for e, d, w, o, m in zip(en, dec_in, widths, outs, modes)
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        taps = self.encoder(images)
        dec = None
        side_outputs = []
        for index, (cell, en) in enumerate(zip(self.decoder, taps)):
            dec, side = cell(en, None if index == 0 else dec)
            side_outputs.append(side)
        if side_outputs[-1].shape[2:] != images.shape[2:]:  # lite0: its finest tap is at 1/2
            side_outputs[-1] = F.interpolate(
                side_outputs[-1], size=images.shape[2:], mode="bilinear", align_corners=False
            )
        return side_outputs

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """RGB float in [0, 1] (B, 3, H, W) -> the input the encoder expects."""
        mean = torch.tensor(self.mean, device=images.device)[:, None, None]
        std = torch.tensor(self.std, device=images.device)[:, None, None]
        return (images - mean) / std

    def load_imagenet(self, weights_path: str = "") -> None:
        """ImageNet weights for the encoder (torchvision VGG16 ``features``, or lite0 offline)."""
        backbones.load_imagenet(self.encoder_name, self.encoder, for_="saliency", weights_path=weights_path)

    def freeze_encoder_batchnorm(self, frozen: bool = True) -> None:
        """Keep the encoder's BatchNorm statistics (ImageNet's) through later ``train()`` calls;
        its BN scale and shift still learn."""
        self.set_batchnorm_frozen(frozen)


def load_picanet(
    path: str | Path, *, encoder: str = "vgg16", paper_attention: bool = False, map_location="cpu"
) -> PiCANet:
    """A PiCANet from the public plain state_dict file or from our training-state checkpoint
    (whose recorded encoder wins). Loads with ``strict=True``; returns it in eval mode."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # missing, truncated, or not a torch file
        raise OSError(f"cannot read saliency checkpoint {path}: {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        extra = state.get("extra", {})
        encoder = extra.get("encoder", encoder)
        paper_attention = extra.get("paper_attention", paper_attention)
        state = state["model"]
    model = PiCANet(encoder=encoder, paper_attention=paper_attention)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(
            f"{path} does not fit PiCANet with encoder {encoder!r} (saliency.encoder): {str(err)[:400]}"
        ) from err
    return model.eval()
