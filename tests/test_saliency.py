"""PiCANet: checkpoint format, attention semantics, and the two saliency stages."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import datasets
import main
from common.layout import Layout
from saliency import make_saliency
from saliency.picanet import (
    GlobalAttention,
    LocalAttention,
    PiCANet,
    ReNet,
    attend_by_offsets,
    attend_unfolded,
    context_grid,
    load_picanet,
    use_unfolded_local_attention,
)
from saliency.train_saliency import supervision_loss

FIXTURE = Path(__file__).parent / "fixtures" / "picanet_state_dict.txt"


def _spec_tensors() -> list[tuple[str, tuple[int, ...]]]:
    tensors = []
    for line in FIXTURE.read_text().splitlines():
        name, shape = line.split(" ", 1)
        tensors.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return tensors


@pytest.fixture(scope="module")
def vgg_picanet():
    torch.manual_seed(0)
    model = PiCANet(encoder="vgg16")
    # non-trivial BatchNorm statistics, so a reload that lost them would show
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_state_dict_names_and_shapes_equal_the_public_checkpoint(vgg_picanet):
    expected = _spec_tensors()
    assert len(expected) == 167
    assert [(k, tuple(v.shape)) for k, v in vgg_picanet.state_dict().items()] == expected
    assert sum(v.numel() for v in vgg_picanet.state_dict().values()) == 47_226_668


def test_plain_state_dict_reloads_strictly_and_computes_the_same(vgg_picanet, tmp_path):
    path = tmp_path / "20epo_383000step.ckpt"
    torch.save(vgg_picanet.state_dict(), path)  # the public file's format: a plain state_dict
    reloaded = load_picanet(path, encoder="vgg16")
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        for a, b in zip(vgg_picanet(x), reloaded(x)):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="saliency.encoder"):
        load_picanet(path, encoder="efficientnet_lite0")


def test_forward_at_224_gives_six_side_outputs(vgg_picanet):
    with torch.no_grad():
        outputs = vgg_picanet(torch.rand(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outputs] == [(1, 1, 28, 28)] * 3 + [
        (1, 1, 56, 56),
        (1, 1, 112, 112),
        (1, 1, 224, 224),
    ]
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in outputs)


def test_context_grid_is_the_unfold_grid_at_28():
    assert context_grid(28).tolist() == list(range(0, 28, 3))
    x = torch.randn(1, 2, 28, 28)
    unfolded = F.unfold(x, kernel_size=10, dilation=3).reshape(1, 2, 100)
    rows = cols = context_grid(28)
    assert torch.equal(x[:, :, rows][:, :, :, cols].reshape(1, 2, 100), unfolded)


def _neighbourhoods(x: torch.Tensor) -> torch.Tensor:
    """U[b, c*49 + k, p]: value of channel c at the k-th point of position p's 7x7 (dilation 2)
    neighbourhood, zero outside; computed with plain loops."""
    batch, channels, height, width = x.shape
    out = torch.zeros(batch, channels * 49, height * width)
    for c in range(channels):
        for k in range(49):
            dy, dx = (k // 7) * 2 - 6, (k % 7) * 2 - 6
            for y in range(height):
                for xx in range(width):
                    sy, sx = y + dy, xx + dx
                    if 0 <= sy < height and 0 <= sx < width:
                        out[:, c * 49 + k, y * width + xx] = x[:, c, sy, sx]
    return out


# 4 x 5: the original order through the unfolded path; 7 x 7: through the offsets
@pytest.mark.parametrize("height,width", [(4, 5), (7, 7)])
def test_local_attention_keeps_the_checkpoints_row_major_reshape(height, width):
    torch.manual_seed(3)
    module = LocalAttention(2)
    x = torch.randn(1, 2, height, width)
    weights = F.softmax(module.conv2(module.conv1(x)), dim=1).detach()  # (1, 49, H, W)
    positions = height * width
    flat_u = _neighbourhoods(x).reshape(-1)  # memory order of (C*49, H*W)
    flat_w = weights.reshape(-1)  # memory order of (49, H*W)
    expected = torch.zeros(1, 2, positions)
    for c in range(2):
        for p in range(positions):
            for k in range(49):
                j = p * 49 + k  # row-major position inside channel c's block and the weights
                expected[0, c, p] += flat_u[c * 49 * positions + j] * flat_w[j]
    with torch.no_grad():
        got = module(x)
    assert torch.allclose(got.reshape(1, 2, positions), expected, atol=1e-5)
    # the paper's order pairs every position with its own neighbourhood
    module.paper_order = True
    u = _neighbourhoods(x).reshape(1, 2, 49, positions)
    paper = (u * weights.reshape(1, 1, 49, positions)).sum(2)
    with torch.no_grad():
        assert torch.allclose(module(x).reshape(1, 2, positions), paper, atol=1e-5)
    assert not torch.allclose(paper, expected, atol=1e-3)


@pytest.mark.parametrize("paper_order", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 7, 14), (1, 4, 14, 7)])
def test_local_attention_by_offsets_equals_the_unfolded_sums_and_gradients(shape, channels_last, paper_order):
    torch.manual_seed(5)
    batch, _, height, width = shape
    x = torch.randn(shape, dtype=torch.float64)
    weights = F.softmax(torch.randn(batch, 49, height, width, dtype=torch.float64), dim=1)
    if channels_last:
        x, weights = (t.contiguous(memory_format=torch.channels_last) for t in (x, weights))
    x.requires_grad_()
    weights.requires_grad_()
    upstream = torch.randn(shape, dtype=torch.float64)
    results = []
    for attend in (attend_unfolded, attend_by_offsets):
        out = attend(x, weights, paper_order)
        results.append((out, *torch.autograd.grad(out, (x, weights), upstream)))
    for expected, got in zip(*results):
        assert torch.allclose(got, expected, atol=1e-12)
    # the output keeps the input's memory format, which the next convolution reads
    assert results[1][0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_local_attention_by_offsets_refuses_the_original_order_where_49_does_not_divide_the_map():
    x = torch.randn(1, 2, 4, 5)
    with pytest.raises(ValueError, match="4 x 5"):
        attend_by_offsets(x, torch.randn(1, 49, 4, 5), paper_order=False)


def test_a_picanet_on_offsets_learns_what_it_learns_on_unfolded_neighbourhoods():
    torch.manual_seed(6)
    # 112 pixels: lite0's local-attention cells see 28 x 28 and 14 x 14 maps, where 49 divides the
    # positions, so the original order runs on the offsets; float64 keeps rounding out of the way
    by_offsets = PiCANet(encoder="efficientnet_lite0").double()
    unfolded = copy.deepcopy(by_offsets)
    assert use_unfolded_local_attention(unfolded) == 2
    images = torch.rand(2, 3, 112, 112, dtype=torch.float64)
    masks = (torch.rand(2, 1, 112, 112) < 0.4).float()
    results = []
    for model in (by_offsets, unfolded):
        model.train()
        supervision_loss(model, (images, masks), torch.device("cpu")).backward()
        results.append([p.grad for p in model.parameters() if p.grad is not None])
        with torch.no_grad():
            results[-1].append(model.eval()(images)[-1])
    for got, expected in zip(*results):
        assert torch.allclose(got, expected, atol=1e-10)


def test_renet_equals_one_lstm_call_per_row_and_column():
    torch.manual_seed(4)
    renet = ReNet(3, 100, hidden=5)
    x = torch.randn(2, 3, 6, 7)
    rows = [renet.vertical(x[:, :, i, :].transpose(1, 2))[0] for i in range(6)]  # (B, W, 2h) each
    grid = torch.stack(rows, dim=1)  # (B, H, W, 2h)
    columns = [renet.horizontal(grid[:, :, j, :])[0] for j in range(7)]  # (B, H, 2h) each
    expected = renet.conv(torch.stack(columns, dim=2).permute(0, 3, 1, 2))
    with torch.no_grad():
        assert torch.allclose(renet(x), expected, atol=1e-5)


def test_global_attention_is_a_softmax_weighted_sum_over_the_grid():
    torch.manual_seed(5)
    module = GlobalAttention(2, hidden=4)
    x = torch.randn(1, 2, 12, 12)
    with torch.no_grad():
        weights = F.softmax(module.renet(x), dim=1)[0]  # (100, 12, 12)
        got = module(x)[0]
    grid = context_grid(12).tolist()
    for y, xx in [(0, 0), (5, 7), (11, 11)]:
        for c in range(2):
            expected = sum(weights[i, y, xx] * x[0, c, grid[i // 10], grid[i % 10]] for i in range(100))
            assert torch.allclose(got[c, y, xx], expected, atol=1e-5)


TINY_SALIENCY = {
    "saliency.steps": 4,
    "saliency.val_every": 2,
    "saliency.train_batch_size": 4,
    "saliency.input_size": 64,
    "saliency.batch_size": 8,
}


def test_train_then_create_saliency_writes_one_map_per_image(tiny_cfg):
    cfg = tiny_cfg(**TINY_SALIENCY)
    summaries = main.run_stages(cfg, ["train_saliency", "create_saliency"])
    layout = Layout(cfg)
    assert 0 <= summaries["train_saliency"]["max_F"] <= 1
    assert layout.checkpoint("saliency", "best").exists()
    for split in ("train", "val"):
        image_set = datasets.build(cfg, split)
        for image_id in image_set.ids:
            prob = layout.read_saliency(image_id)
            assert prob.shape == image_set.image_size(image_id)  # the image's own size
            assert 0 <= prob.min() and prob.max() <= 1
            binary = layout.saliency_binary(image_id)
            assert binary.exists()
    assert "dataset_max_F" in summaries["create_saliency"]


def test_threshold_changes_without_rerunning_the_network(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(**TINY_SALIENCY)
    main.run_stages(cfg, ["train_saliency", "create_saliency"])
    layout = Layout(cfg)
    image_id = datasets.build(cfg, "train").ids[0]
    prob = layout.read_saliency(image_id)

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not run again")

    monkeypatch.setattr(make_saliency, "saliency_maps", no_network)
    for threshold in (0.3, 0.7):
        cfg.saliency.threshold = threshold
        make_saliency.run(cfg)  # every map exists: only the binary views are rewritten
        view = np.asarray(layout.read_saliency(image_id))  # unchanged probabilities
        assert np.array_equal(view, prob)
        from common import files

        binary = files.read_label_png(layout.saliency_binary(image_id)) > 127
        assert np.array_equal(binary, prob >= threshold)

    # same threshold: the views on disk stay; a missing one is written again
    written: list[str] = []
    real_write = make_saliency.files.write_gray_png
    monkeypatch.setattr(
        make_saliency.files, "write_gray_png", lambda path, image: written.append(path.name) or real_write(path, image)
    )
    layout.saliency_binary(image_id).unlink()
    make_saliency.run(cfg)
    assert written == [f"{image_id}.png"]
    # a rewrite at another threshold that was killed halfway leaves no threshold named: all again
    layout.saliency_binary_threshold().unlink()
    written.clear()
    make_saliency.run(cfg)
    assert len(written) == sum(len(datasets.build(cfg, split)) for split in ("train", "val"))


def test_create_saliency_without_a_network_fails_before_any_work(tiny_cfg, capsys):
    cfg = tiny_cfg()
    with pytest.raises(FileNotFoundError, match="saliency.checkpoint.*TRAIN_SALIENCY"):
        main.preflight(cfg, ["create_saliency"])
    main.preflight(cfg, ["train_saliency", "create_saliency"])  # will be trained first: fine


def test_configured_public_format_checkpoint_is_used(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    network = PiCANet(encoder="efficientnet_lite0").eval()
    path = tmp_path / "lite.ckpt"
    torch.save(network.state_dict(), path)
    cfg = tiny_cfg(**{**TINY_SALIENCY, "saliency.checkpoint": str(path)})
    trained = main.run_stages(cfg, ["train_saliency"])["train_saliency"]
    assert set(trained) == {"seconds"}  # no training scores: nothing was trained
    assert not Layout(cfg).checkpoint("saliency", "last").exists()  # nothing trained
    make_saliency.run(cfg)
    image_set = datasets.build(cfg, "val")
    image = torch.from_numpy(image_set.image(image_set.ids[0])).permute(2, 0, 1).float()[None] / 255
    resized = F.interpolate(image, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = network(network.prepare(resized))[-1]
    expected = F.interpolate(expected, size=image.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    stored = Layout(cfg).read_saliency(image_set.ids[0])
    assert np.abs(stored - expected.numpy()).max() <= 1 / 255 + 1e-6


class _SideDependentNetwork(torch.nn.Module):
    """A stand-in PiCANet whose map depends on the input side: a bright left half at side 32, a
    bright bottom half at side 64 (both at 0.8, the rest at 0.1)."""

    def prepare(self, images):
        return images

    def forward(self, images):
        side = images.shape[-1]
        probs = torch.full((images.shape[0], 1, side, side), 0.1)
        if side == 32:
            probs[..., :, : side // 2] = 0.8
        else:
            probs[..., side // 2 :, :] = 0.8
        return [probs]


def test_maps_of_several_input_sides_are_fused_by_their_maximum():
    network = _SideDependentNetwork()
    images = [torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 64, 64)]
    sizes = [(20, 30), (40, 40)]
    fused = make_saliency.saliency_maps(network, images, sizes, False)
    left = make_saliency.saliency_maps(network, images[0], sizes, False)
    bottom = make_saliency.saliency_maps(network, images[1], sizes, False)
    for index, size in enumerate(sizes):
        assert fused[index].shape == size
        assert np.array_equal(fused[index], np.maximum(left[index], bottom[index]))
        height, width = size
        assert fused[index][height - 1, 0] == pytest.approx(0.8)  # bright at both sides
        assert fused[index][0, width - 1] == pytest.approx(0.1)  # bright at neither


def test_create_saliency_at_two_scales_keeps_the_larger_probability(tiny_cfg):
    cfg = tiny_cfg(**TINY_SALIENCY)
    main.run_stages(cfg, ["train_saliency", "create_saliency"])
    layout = Layout(cfg)
    image_id = datasets.build(cfg, "train").ids[0]
    single = layout.read_saliency(image_id)
    cfg.saliency.scales = [1.0, 1.3]
    # 64 x 1.3 = 83 would not fit lite0's 1/16 map (the decoder's sizes would not match): 80
    assert make_saliency.input_sides(cfg.saliency) == [64, 80]
    main.run_stages(cfg, ["create_saliency"])  # the maps are stale: made again at both sides
    fused = layout.read_saliency(image_id)
    assert np.all(fused >= single - 1e-2)  # stored at 8 bits
    assert not np.allclose(fused, single, atol=1e-2)
