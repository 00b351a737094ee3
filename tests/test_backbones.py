"""The backbone registry: every entry, in every form, through the same checks (offline build, declared
outputs, Grad-CAM layer, frozen BatchNorm, normalisation, weights from a local file), and the three
networks built on it. A new registry entry is checked here once its normalisation is added below."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from common import backbones
from common.backbone_parts import FrozenBatchNormMixin, batchnorm_layers, to_tensor

torch.set_num_threads(1)
SIDE = 64
# builds or forwards that take seconds on a CPU
SLOW = {"vgg16_bn", "resnet101"}
SLOW_WEIGHTS = SLOW | {"vgg16"}  # the whole ImageNet VGG16 (138 M parameters) is the weights file's source
EXPECTED_NORMALISATION = {
    "vgg16": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # the public PiCANet checkpoint's input
    "vgg16_bn": (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD),
    "resnet101": (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD),
    "resnet50": (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD),
    "mobilenet_v3_large": (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD),
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _forms(slow: set[str]) -> list:
    return [
        pytest.param(name, use, id=f"{use}-{name}", marks=[pytest.mark.slow] if name in slow else [])
        for use in backbones.USES
        for name in backbones.names(for_=use)
    ]


def _strided_forms(slow: set[str]) -> list:
    return [
        pytest.param(name, use, stride, id=f"{use}-{name}-os{stride}", marks=[pytest.mark.slow] if name in slow else [])
        for use in backbones.USES
        for name in backbones.names(for_=use)
        for stride in backbones.form(name, for_=use).output_strides
    ]


def _outputs(extractor: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = extractor(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to fetch weights fails loudly."""
    import torchvision

    def refuse(*args, **kwargs):
        raise AssertionError("a build with pretrained=False tried to fetch weights")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torchvision.models, "get_model_weights", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


# ---- every form ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, use, output_stride", _strided_forms(SLOW))
def test_builds_offline_with_the_declared_outputs(offline, name, use, output_stride):
    form = backbones.form(name, for_=use)
    extractor = backbones.build(name, for_=use, output_stride=output_stride).eval()
    with torch.no_grad():
        outputs = _outputs(extractor, torch.randn(1, 3, SIDE, SIDE))
    expected = [(1, c, SIDE // s, SIDE // s) for c, s in zip(form.channels, form.strides(output_stride))]
    assert [tuple(o.shape) for o in outputs] == expected


@pytest.mark.parametrize("name, use", _forms(SLOW))
def test_default_gradcam_layer_is_an_activation_of_the_extractor(name, use):
    form = backbones.form(name, for_=use)
    if use != "classifier":
        assert form.cam_layer == ""  # only the classifier is explained by Grad-CAM
        return
    extractor = backbones.build(name, for_=use).eval()
    layers = dict(extractor.named_modules())
    assert form.cam_layer in layers
    seen = []
    layers[form.cam_layer].register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        extractor(torch.randn(1, 3, SIDE, SIDE))
    assert len(seen) == 1 and float(seen[0].min()) >= 0  # Grad-CAM's ReLU assumes non-negative maps


class _Host(FrozenBatchNormMixin, nn.Module):
    frozen_batchnorm_scope = "backbone"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.BatchNorm2d(4)


@pytest.mark.parametrize("name, use", _forms(SLOW))
def test_frozen_batchnorm_survives_train_calls(name, use):
    host = _Host(backbones.build(name, for_=use))
    layers = batchnorm_layers(host.backbone)
    if not layers:
        pytest.skip(f"{name} ({use}) has no BatchNorm")
    host.train()
    host.set_batchnorm_frozen(True, freeze_affine=True)
    host.eval()
    host.train()  # validation toggles the mode; the statistics must stay frozen
    assert all(not layer.training for layer in layers) and host.head.training
    assert not any(p.requires_grad for layer in layers for p in layer.parameters())
    before = [layer.running_mean.clone() for layer in layers]
    with torch.no_grad():
        _outputs(host.backbone, torch.randn(2, 3, SIDE, SIDE))
    assert all(torch.equal(b, layer.running_mean) for b, layer in zip(before, layers))
    host.set_batchnorm_frozen(False, freeze_affine=True)
    assert all(layer.training for layer in layers)
    assert all(p.requires_grad for layer in layers for p in layer.parameters())
    host.set_batchnorm_frozen(True)  # statistics only: the scale and shift keep learning
    assert all(not layer.training for layer in layers)
    assert all(p.requires_grad for layer in layers for p in layer.parameters())


@pytest.mark.parametrize("name", list(backbones.REGISTRY))
def test_normalisation(name):
    assert set(EXPECTED_NORMALISATION) == set(backbones.REGISTRY)
    mean, std = backbones.normalisation(name)
    assert (mean, std) == EXPECTED_NORMALISATION[name]
    assert len(mean) == len(std) == 3 and all(s > 0 for s in std)


def _sha(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("name, use", _forms(SLOW_WEIGHTS))
def test_imagenet_weights_from_a_local_file(tmp_path, name, use):
    form = backbones.form(name, for_=use)
    torch.manual_seed(0)
    random_init = backbones.build(name, for_=use).state_dict()
    source = backbones.imagenet_network(name)
    with torch.no_grad():  # every tensor distinct, so each loaded one can be traced to its source
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    # VGG's fully connected layers, which no extractor uses, would make a 500 MB file
    state = {k: v for k, v in source.state_dict().items() if v.numel() < 5_000_000}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    source_tensors = {_sha(v) for v in state.values() if v.is_floating_point()}

    torch.manual_seed(0)
    loaded = backbones.build(name, for_=use, pretrained=True, weights_path=str(path)).state_dict()
    new = tuple(f"{layer}." for layer in form.new_layers)
    checked = 0
    for key, tensor in loaded.items():
        if not tensor.is_floating_point():
            continue
        if key.startswith(new):
            assert torch.equal(tensor, random_init[key]), key
        else:
            assert _sha(tensor) in source_tensors, key
            checked += 1
    assert checked > 10


# ---- the registry itself ------------------------------------------------------------------------
def test_names_per_use_keep_the_order_of_the_settings_choices():
    assert backbones.names(for_="classifier") == ("vgg16_bn", "resnet50", "efficientnet_lite0")
    assert backbones.names(for_="deeplab") == ("resnet101", "resnet50", "mobilenet_v3_large", "efficientnet_lite0")
    assert backbones.names(for_="saliency") == ("vgg16", "efficientnet_lite0")
    assert backbones.output_strides(for_="classifier") == (16, 32)
    assert backbones.output_strides(for_="deeplab") == (8, 16)


def test_the_registry_imports_without_torch():
    code = "import sys; from common import backbones; backbones.names(for_='deeplab'); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=backbones.__file__.rsplit("/common/", 1)[0],
    )
    assert result.stdout.strip() == "False"


def test_unknown_names_uses_and_strides_are_clear_errors():
    with pytest.raises(ValueError, match="backbone 'vgg19' is not one of"):
        backbones.build("vgg19", for_="classifier")
    with pytest.raises(ValueError, match="use 'detector'"):
        backbones.names(for_="detector")
    with pytest.raises(ValueError, match="mobilenet_v3_large' has no classifier form"):
        backbones.build("mobilenet_v3_large", for_="classifier")
    with pytest.raises(ValueError, match="supports output stride 16, 8, not 32"):
        backbones.build("efficientnet_lite0", for_="deeplab", output_stride=32)


def test_every_saliency_encoder_has_a_picanet_decoder():
    from saliency.picanet import DECODERS

    assert set(DECODERS) == set(backbones.names(for_="saliency"))
    for name, (widths, outs, modes, _, _) in DECODERS.items():
        cells = len(backbones.form(name, for_="saliency").channels)
        assert len(outs) == len(modes) == cells and (widths is None or len(widths) == cells)


def test_to_tensor_normalises_to_the_mean_colour():
    image = np.array([[[0, 128, 255], [255, 255, 255]]], dtype=np.uint8)  # (H 1, W 2, RGB)
    tensor = to_tensor(image, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert tensor.shape == (3, 1, 2) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)
    assert torch.equal(tensor[:, 0, 1], torch.ones(3))
    # a read-only array (np.asarray of a PIL image) gives the same tensor, with no warning
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(to_tensor(image, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), tensor)


# ---- the three networks built on it --------------------------------------------------------------
def _classifier():
    from classifier.models import build_classifier

    model = build_classifier(backbone="efficientnet_lite0", num_classes=3, pretrained=False)
    return model, model.features, model.freeze_batchnorm, True


def _deeplab():
    from deeplab.models import build_deeplab

    model = build_deeplab(backbone="efficientnet_lite0", num_classes=3, pretrained_backbone=False)
    return model, model.backbone, model.freeze_backbone_batchnorm, False


def _picanet():
    from saliency.picanet import PiCANet

    model = PiCANet(encoder="efficientnet_lite0")
    return model, model.encoder, model.freeze_encoder_batchnorm, False


@pytest.mark.parametrize("make", [_classifier, _deeplab, _picanet], ids=["classifier", "deeplab", "picanet"])
def test_networks_freeze_their_backbone_batchnorm_only(make):
    model, backbone, freeze, affine_frozen = make()
    name = getattr(model, "backbone_name", None) or getattr(model, "encoder_name", None) or model.name
    assert isinstance(model, FrozenBatchNormMixin)
    assert (model.mean, model.std) == backbones.normalisation(name)
    model.train()
    freeze()
    model.eval()
    model.train()
    inside = batchnorm_layers(backbone)
    outside = [m for m in batchnorm_layers(model) if all(m is not b for b in inside)]
    assert inside and all(not m.training for m in inside)
    assert all(m.training for m in outside)  # DeepLab's head and PiCANet's decoder still learn theirs
    assert bool(outside) == (make is not _classifier)
    assert all(p.requires_grad != affine_frozen for m in inside for p in m.parameters())
