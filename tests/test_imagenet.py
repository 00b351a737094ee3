"""ImageNet weights: the offline EfficientNet-Lite0 recognises real photos; clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classifier.data import to_tensor
from classifier.models import build_classifier
from common import backbones, imagenet


def _photo(name: str, size: int = 224) -> torch.Tensor:
    import skimage.data
    from PIL import Image

    image = np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize((size, size)))
    return to_tensor(image, backbones.LITE0_MEAN, backbones.LITE0_STD)[None]


@pytest.fixture(scope="module")
def lite0():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    imagenet.load_lite0_imagenet(model)
    return model.eval()


@pytest.mark.parametrize(
    "photo, expected",
    [
        ("chelsea", {281, 282, 285}),  # tabby/tiger/Egyptian cat
        ("coffee", {967}),
    ],
)  # espresso
def test_offline_lite0_classifies_real_photos(lite0, photo, expected):
    with torch.no_grad():
        probabilities = lite0(_photo(photo)).softmax(1)[0]
    assert int(probabilities.argmax()) in expected
    assert float(probabilities[list(expected)].sum()) > 0.5


def test_classifier_backbone_gets_the_same_weights(lite0):
    model = build_classifier(backbone="efficientnet_lite0", num_classes=3, pretrained=True, output_stride=32).eval()
    reference = lite0.state_dict()
    for name, tensor in model.features.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    with torch.no_grad():
        expected = lite0.forward_features(_photo("chelsea", 160))
        assert torch.allclose(model.features(_photo("chelsea", 160)), expected, atol=1e-5)


def test_missing_torchvision_weights_say_how_to_get_them(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(imagenet.WeightsUnavailable, match="weights_path.*efficientnet_lite0.*pretrained = False"):
        build_classifier(backbone="vgg16_bn", num_classes=3, pretrained=True)


def test_torchvision_weights_from_a_local_file(tmp_path):
    import torchvision

    source = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    model = build_classifier(backbone="resnet50", num_classes=4, pretrained=True, weights_path=str(path))
    assert torch.equal(model.features.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_unreadable_local_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(imagenet.WeightsUnavailable, match="broken.pth"):
        build_classifier(backbone="efficientnet_lite0", num_classes=2, pretrained=True, weights_path=str(path))


@pytest.mark.parametrize(
    "backbone, output_stride",
    [("efficientnet_lite0", 16), ("efficientnet_lite0", 32), ("resnet50", 16), ("vgg16_bn", 16)],
)
def test_classifier_backbones_and_target_layers(backbone, output_stride):
    model = build_classifier(backbone=backbone, num_classes=6, pretrained=False, output_stride=output_stride).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
    assert logits.shape == (1, 6)
    assert features.shape[2:] == (96 // output_stride, 64 // output_stride)
    assert model.default_target_layer in dict(model.named_modules())
    assert F.relu(features).equal(features)  # the target is an activation: maps are non-negative


def test_frozen_batchnorm_stays_frozen_across_train_calls():
    model = build_classifier(backbone="efficientnet_lite0", num_classes=2, pretrained=False)
    model.train()
    model.freeze_batchnorm()
    model.eval()
    model.train()  # e.g. after a validation pass
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.training for m in norms)
    before = norms[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(norms[0].running_mean, before)
    assert model.classifier.training
