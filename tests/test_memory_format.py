"""runtime.memory_format: which format ``auto`` picks, and that the networks' work in channels_last
(training, saliency maps, Grad-CAM, segmentation) gives what the contiguous networks give."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import config as config_module
from attention.gradcam import GradCam
from attention.make_cam import compute_cams
from classifier.models import build_classifier
from common import runtime, training
from common.depthwise import DilatedDepthwiseConv2d
from common.layout import Layout
from config import ConfigError, build_config, validate
from deeplab.inference import batch_probabilities
from deeplab.models import build_deeplab
from deeplab.segmenter import Segmenter
from saliency.make_saliency import saliency_maps
from saliency.picanet import PiCANet
from saliency.train_saliency import supervision_loss


def _is_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def _first_kernel(model: torch.nn.Module) -> torch.Tensor:
    """The first convolution weight wider than 1 x 1 (whose two formats differ in memory)."""
    return next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)


@pytest.mark.parametrize(
    ("device", "precision", "expected"),
    [
        ("cpu", "fp32", "channels_last"),
        ("cpu", "bf16", "contiguous"),
        ("cuda", "fp32", "contiguous"),
        ("cuda:1", "bf16", "contiguous"),
    ],
)
def test_auto_memory_format_follows_device_and_precision(device, precision, expected):
    assert config_module.auto_memory_format(device, precision) == expected


@pytest.mark.parametrize("native", [True, False])
def test_auto_memory_format_is_resolved_at_validation_after_the_precision(native, monkeypatch):
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: native)
    cfg = validate(build_config("demo", ["runtime.device=cpu"]))
    assert cfg.runtime.memory_format == ("contiguous" if native else "channels_last")
    assert json.loads(cfg.to_json())["runtime"]["memory_format"] == cfg.runtime.memory_format
    chosen = validate(build_config("demo", ["runtime.device=cpu", "runtime.memory_format=contiguous"]))
    assert chosen.runtime.memory_format == "contiguous"  # a choice is kept whatever the hardware
    with pytest.raises(ConfigError, match="runtime.memory_format: 'nhwc' is not one of"):
        validate(build_config("demo", ["runtime.memory_format=nhwc"]))


def test_to_memory_format_converts_convolution_weights_only_when_asked():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    assert runtime.to_memory_format(model, "contiguous") is model
    assert all(p.is_contiguous() for p in model.parameters())
    runtime.to_memory_format(model, "channels_last")
    assert _is_channels_last(model[0].weight) and _is_channels_last(model[2].weight)
    runtime.to_memory_format(model, "contiguous")  # and back, as a Segmenter asked for contiguous does
    assert all(p.is_contiguous() for p in model.parameters())
    with pytest.raises(ValueError, match="memory format 'nhwc'"):
        runtime.to_memory_format(model, "nhwc")


def test_grad_cam_of_a_channels_last_classifier_matches_the_contiguous_one():
    torch.manual_seed(0)
    model = build_classifier(backbone="efficientnet_lite0", num_classes=4, pretrained=False).eval()
    images = torch.randn(2, 3, 64, 64)
    classes = [[0, 2], [3]]
    with GradCam(model, model.default_target_layer) as grad_cam:
        contiguous = compute_cams(grad_cam, images, classes, [1.0, 1.5], True, (16, 16), "fp32")
    runtime.to_memory_format(model, "channels_last")
    seen = []
    hook = dict(model.named_modules())[model.default_target_layer].register_forward_hook(
        lambda module, inputs, output: seen.append(_is_channels_last(output))
    )
    with GradCam(model, model.default_target_layer) as grad_cam:
        channels_last = compute_cams(grad_cam, images, classes, [1.0, 1.5], True, (16, 16), "fp32")
    hook.remove()
    assert seen and all(seen)  # the target layer's activations really were channels-last
    for exact, other in zip(contiguous, channels_last):
        assert exact.abs().sum() > 0
        assert torch.allclose(exact, other, atol=1e-4)


def test_deeplab_and_segmenter_in_channels_last_give_the_contiguous_probabilities():
    torch.manual_seed(0)
    deeplab = build_deeplab(backbone="efficientnet_lite0", num_classes=3, pretrained_backbone=False).eval()
    pictures = [np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8) for seed in (1, 2)]
    contiguous = batch_probabilities(deeplab, pictures)
    segmenter = Segmenter(deeplab, ["a", "b"], device="cpu", precision="fp32", memory_format="channels_last")
    assert _is_channels_last(_first_kernel(segmenter.model))
    for exact, other in zip(contiguous, batch_probabilities(segmenter.model, pictures)):
        assert torch.allclose(exact, other, atol=1e-5)
    probabilities = segmenter.probabilities(pictures[0])
    assert probabilities.shape == (3, 40, 56)
    np.testing.assert_allclose(probabilities, contiguous[0].numpy(), atol=1e-5)
    # auto follows the device and the precision: contiguous at bf16
    other = build_deeplab(backbone="efficientnet_lite0", num_classes=3, pretrained_backbone=False)
    assert _first_kernel(Segmenter(other, ["a", "b"], device="cpu", precision="bf16").model).is_contiguous()


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "vgg16"])
def test_picanet_in_channels_last_gives_the_contiguous_maps_and_gradients(encoder):
    torch.manual_seed(0)
    # float64: BatchNorm in training mode over 4 x 4 maps magnifies float32's rounding differences
    built = PiCANet(encoder=encoder).double()
    images = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    masks = (torch.rand(2, 1, 64, 64) < 0.4).float()  # the loss is scored in float32
    results = []
    for memory_format in ("contiguous", "channels_last"):
        # a copy each: the training-mode pass moves BatchNorm's running statistics
        model = runtime.to_memory_format(copy.deepcopy(built), memory_format)
        backward_kinds = []
        for layer in model.modules():
            if type(layer) is DilatedDepthwiseConv2d:
                layer.register_forward_hook(
                    lambda m, i, out, kinds=backward_kinds: kinds.append(type(out.grad_fn).__name__)
                )
        model.eval()
        maps = saliency_maps(model, images, [(40, 56), (64, 64)], minmax=False)
        model.train()
        model.zero_grad(set_to_none=True)
        supervision_loss(model, (images, masks), torch.device("cpu")).backward()
        results.append((maps, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        if encoder == "efficientnet_lite0":  # its dilated layers took common/depthwise.py's backward
            fast = memory_format == "channels_last"
            assert ("_DilatedDepthwiseBackward" in backward_kinds) is fast
    assert _is_channels_last(_first_kernel(model))
    (maps, grads), (maps_last, grads_last) = results
    for exact, other in zip(maps, maps_last):
        np.testing.assert_allclose(exact, other, atol=1e-5)
    for exact, other in zip(grads, grads_last):
        torch.testing.assert_close(exact, other, rtol=1e-7, atol=1e-9)


class _Pictures(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, item):
        index, _ = training.split_item(item)
        generator = torch.Generator().manual_seed(index)
        return torch.randn(3, 16, 16, generator=generator), torch.tensor(float(index % 2))


def _conv_spec(memory_format: str) -> training.TrainingSpec:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss(network, batch, device):
        x, y = (t.to(device) for t in batch)
        return ((network(x).mean(1) - y) ** 2).mean()

    return training.TrainingSpec(
        stage="toy",
        checkpoints="toy",
        model=model,
        optimizer=optimizer,
        scheduler=training.poly_schedule(optimizer, 6),
        steps=6,
        val_every=0,
        batch_size=2,
        samples=_Pictures(),
        loss=loss,
        metric="score",
        describe={},
        resume_keys=(),
        writer=training._NullWriter(),
        memory_format=memory_format,
    )


def test_training_in_channels_last_learns_the_contiguous_weights_and_saves_loadable_ones(make_cfg, tmp_path):
    trained = {}
    for memory_format in ("contiguous", "channels_last"):
        cfg = make_cfg(**{"paths.checkpoints": str(tmp_path / memory_format)})
        spec = _conv_spec(memory_format)
        training.fit(cfg, spec, device=torch.device("cpu"))
        assert _is_channels_last(spec.model[0].weight) == (memory_format == "channels_last")
        state = torch.load(Layout(cfg).checkpoint("toy", "last"), weights_only=False)
        fresh = _conv_spec("contiguous").model
        fresh.load_state_dict(state["model"])  # a channels-last checkpoint loads into a contiguous network
        trained[memory_format] = fresh[0].weight.detach()
    assert not torch.equal(trained["contiguous"], _conv_spec("contiguous").model[0].weight.detach())  # it learnt
    assert torch.allclose(trained["contiguous"], trained["channels_last"], atol=1e-5)


@pytest.mark.parametrize("native", [True, False])
def test_a_run_says_its_arithmetic_and_why_a_cpu_runs_fp32(native, monkeypatch):
    import main

    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: native)
    cfg = validate(build_config("demo", ["runtime.device=cpu"]))
    line = main.describe_arithmetic(cfg)
    assert line.startswith(f"device cpu, precision {cfg.runtime.precision}, memory format {cfg.runtime.memory_format}")
    assert ("no native bf16" in line) is (not native)
    chosen = validate(build_config("demo", ["runtime.device=cpu", "runtime.precision=fp32"]))
    assert ("no native bf16" in main.describe_arithmetic(chosen)) is (not native)


def test_the_stages_train_and_load_their_networks_in_runtime_memory_format(tiny_cfg):
    import datasets
    from classifier import load_trained as load_classifier
    from classifier.train_classifier import run as train_classifier
    from deeplab.eval_deeplab import load_trained as load_deeplab
    from deeplab.train_deeplab import run as train_deeplab
    from saliency.make_saliency import load_network as load_saliency
    from saliency.train_saliency import run as train_saliency

    cpu = torch.device("cpu")
    cfg = tiny_cfg(
        **{
            "runtime.device": "cpu",
            "runtime.memory_format": "channels_last",
            "saliency.steps": 1,
            "saliency.val_every": 1,
            "saliency.input_size": 64,
            "classifier.steps": 1,
            "deeplab.steps": 1,
            "deeplab.gt_percentage": 100,  # real masks: no earlier stage needed
            "eval.checkpoint": "last",
        }
    )
    train_saliency(cfg)
    train_classifier(cfg)
    train_deeplab(cfg)
    for folder in ("saliency", "classifier", "deeplab"):
        state = torch.load(Layout(cfg).checkpoint(folder, "last"), weights_only=False)
        kernel = next(t for t in state["model"].values() if t.dim() == 4 and t.shape[-1] > 1)
        assert _is_channels_last(kernel)  # trained in channels_last: torch.save keeps the strides
    names = datasets.build(cfg, "train").class_names
    assert _is_channels_last(_first_kernel(load_classifier(cfg, names, cpu)))
    assert _is_channels_last(_first_kernel(load_deeplab(cfg, cpu)[0]))
    assert _is_channels_last(_first_kernel(load_saliency(cfg, cpu)))
    cfg.runtime.memory_format = "contiguous"
    assert _first_kernel(load_saliency(cfg, cpu)).is_contiguous()
    assert _first_kernel(load_classifier(cfg, names, cpu)).is_contiguous()
    assert _first_kernel(load_deeplab(cfg, cpu)[0]).is_contiguous()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "runtime.memory_format=channels_last"], "--set runtime.memory_format=channels_last: use"),
        (["--set", "runtime.precision=bf16"], "--set runtime.precision=bf16: use"),
        (["--memory-formats", "contiguous,auto"], "--memory-formats auto: name the formats"),
    ],
)
def test_stage_precision_names_every_variant_it_compares(arguments, message, capsys, tmp_path):
    from benchmarks import stage_precision

    with pytest.raises(SystemExit):
        stage_precision.main_cli([*arguments, "--from", str(tmp_path), "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
