"""Segmenting new images: the Segmenter API, the segment.py command line, TorchScript / ONNX export.

Every test runs a small random-weight DeepLab saved the way TRAIN_DEEPLAB saves one."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segment
from common import checkpoint, files
from common.crf import CrfParams
from config import auto_precision
from deeplab.data import to_tensor
from deeplab.inference import crf_refine
from deeplab.models import build_deeplab
from deeplab.segmenter import CheckpointError, Segmenter, load_checkpoint

torch.set_num_threads(1)
# torch 2.14 calls torch.jit.load deprecated; loading the export back is what the tests check
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
CLASS_NAMES = ["disc", "box"]


def random_deeplab(backbone: str = "mobilenet_v3_large", num_classes: int = 3):
    """A random-weight DeepLab in eval mode whose BatchNorm statistics come from random images,
    so activations have realistic scales and the argmax varies over the image."""
    torch.manual_seed(0)
    model = build_deeplab(backbone=backbone, num_classes=num_classes, output_stride=16, pretrained_backbone=False)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64))
    return model.eval()


def save_like_train_deeplab(path, model, class_names=CLASS_NAMES, **changes):
    """What TRAIN_DEEPLAB's save_last writes: the model's describe() plus its own keys in ``extra``."""
    extra = {
        **model.describe(),
        "class_names": list(class_names),
        "gt_percentage": 0.0,
        "pretrained_backbone": False,
        "freeze_backbone_bn": False,
        "weakly_supervised": True,
        "not_weakly_supervised_because": [],
        "best": {"mIoU": 0.5, "step": 3},
    }
    extra.update(changes)
    extra = {k: v for k, v in extra.items() if v is not None}
    checkpoint.save_training_state(path, model=model, step=3, extra=extra)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, the model it holds)."""
    model = random_deeplab()
    path = save_like_train_deeplab(tmp_path_factory.mktemp("ckpt") / "best.pt", model)
    return path, model


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth blobs rather than noise, so predictions form regions as on photos
    small = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def direct_labels(model, image: np.ndarray) -> np.ndarray:
    """The network on the image padded with the mean colour to a multiple of the output stride
    (what own-size inference promises), cut back, argmax."""
    height, width = image.shape[:2]
    stride = model.output_stride
    tensor = to_tensor(image, model.mean, model.std)
    padded = F.pad(tensor, (0, -width % stride, 0, -height % stride))
    with torch.no_grad():
        logits = model(padded[None])[0, :, :height, :width]
    return logits.argmax(0).numpy()


# ---- Segmenter ---------------------------------------------------------------------------------
def test_segmenter_from_checkpoint_matches_the_network(trained):
    path, model = trained
    segmenter = Segmenter.from_checkpoint(path, device="cpu", batch_size=2)
    assert segmenter.class_names == ["background", *CLASS_NAMES]
    assert segmenter.palette.shape == (3, 3) and (segmenter.palette == files.voc_palette()[:3]).all()
    assert segmenter.description["checkpoint"] == str(path) and segmenter.description["step"] == 3
    images = [random_image(48, 64, 1), random_image(37, 53, 2), random_image(48, 64, 3), random_image(21, 30, 4)]
    labels = segmenter.segment(images)
    assert isinstance(labels, list) and len(labels) == len(images)
    for image, label in zip(images, labels):
        assert label.shape == image.shape[:2] and label.dtype == np.uint8
        assert (label == direct_labels(model, image)).all()
    # a multiple of the stride needs no padding: the plain forward
    with torch.no_grad():
        plain = model(to_tensor(images[0], model.mean, model.std)[None])[0].argmax(0).numpy()
    assert (labels[0] == plain).all()
    assert len(np.unique(np.concatenate([label.ravel() for label in labels]))) > 1  # not a constant map
    # one image in, one array out, the same as in company
    alone = segmenter.segment(images[1])
    assert isinstance(alone, np.ndarray) and (alone == labels[1]).all()
    probabilities = segmenter.probabilities(images[1])
    assert probabilities.shape == (3, 37, 53) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert (probabilities.argmax(0) == alone).all()


def test_segmenter_takes_paths_pil_and_grey_images(trained, tmp_path):
    path, model = trained
    segmenter = Segmenter.from_checkpoint(path, device="cpu")
    image = random_image(40, 56, 5)
    Image.fromarray(image).save(tmp_path / "a.png")
    from_file = segmenter.segment(tmp_path / "a.png")
    assert (from_file == segmenter.segment(image)).all()
    assert (segmenter.segment(Image.fromarray(image)) == from_file).all()
    assert segmenter.segment(image[..., 0]).shape == (40, 56)
    with pytest.raises(ValueError, match="uint8"):
        segmenter.segment(image.astype(np.float32))


def test_segmenter_options_scales_flip_crf_precision(trained):
    path, model = trained
    image = random_image(40, 48, 6)
    plain = Segmenter.from_checkpoint(path, device="cpu")
    averaged = Segmenter.from_checkpoint(path, device="cpu", scales=(1.0, 0.75), flip=True)
    probs_plain, probs_avg = plain.probabilities(image), averaged.probabilities(image)
    assert probs_avg.shape == probs_plain.shape and not np.allclose(probs_avg, probs_plain, atol=1e-3)
    # the CRF option is EVAL_DEEPLAB's refinement: by default on the network's probabilities
    refined = Segmenter.from_checkpoint(path, device="cpu", crf=True).segment(image)
    params, unary, confidence = plain.crf_params, plain.crf_unary, plain.crf_confidence
    assert isinstance(params, CrfParams) and params.bilateral_sxy == 121.0 and unary == "softmax"
    expected = crf_refine(image, plain.segment(image), 3, confidence, params, probs_plain)
    assert (refined == expected).all()
    # the original's unaries: its own labels at crf_confidence
    from_labels = Segmenter.from_checkpoint(path, device="cpu", crf=True, crf_unary="labels").segment(image)
    assert (from_labels == crf_refine(image, plain.segment(image), 3, confidence, params)).all()
    assert (from_labels != refined).any()
    bf16 = Segmenter.from_checkpoint(path, device="cpu", precision="bf16").segment(image)
    assert Segmenter.from_checkpoint(path, device="cpu", precision="auto").precision == auto_precision("cpu")
    assert bf16.shape == image.shape[:2] and (bf16 == plain.segment(image)).mean() > 0.8
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Segmenter.from_checkpoint(path, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="scales"):
        Segmenter.from_checkpoint(path, device="cpu", scales=(1.0, -0.5))


def test_checkpoint_without_class_names_is_refused_by_name(tmp_path):
    model = random_deeplab()
    bare = save_like_train_deeplab(tmp_path / "old.pt", model, class_names=[])
    with pytest.raises(CheckpointError, match=r"old\.pt stores no class_names"):
        load_checkpoint(bare)
    no_description = tmp_path / "plain.pt"
    checkpoint.save_training_state(no_description, model=model)
    with pytest.raises(CheckpointError, match=r"plain\.pt does not describe its network"):
        load_checkpoint(no_description)
    wrong = save_like_train_deeplab(tmp_path / "wrong.pt", model, class_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match=r"wrong\.pt: 3 class_names but 3 outputs"):
        load_checkpoint(wrong)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read DeepLab checkpoint .*broken\.pt"):
        load_checkpoint(broken)
    Image.fromarray(random_image(32, 32, 7)).save(tmp_path / "x.png")
    assert segment.main([str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--checkpoint", str(bare)]) == 2


# ---- segment.py --------------------------------------------------------------------------------
def write_photo_tree(root):
    """Images at several depths, same names in different folders and side by side with other
    suffixes, an upper-case suffix, an EXIF-rotated JPEG, a corrupt file and a non-image; returns
    {relative path: the upright RGB array} of the readable images."""
    images = {
        "a.jpg": random_image(48, 64, 10),
        "sub/a.jpg": random_image(40, 40, 11),
        "sub/deeper/b.PNG": random_image(33, 45, 12),
        "c.bmp": random_image(30, 50, 13),
        "twin.png": random_image(36, 36, 14),
        "twin.jpg": random_image(36, 36, 15),
    }
    for name, array in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / name)
    # stored 40 wide x 24 high, orientation 6: displayed 24 wide x 40 high
    stored = random_image(24, 40, 16)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "sub" / "portrait.jpg", exif=exif)
    images["sub/portrait.jpg"] = files.read_image(root / "sub" / "portrait.jpg")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.txt").write_text("not an image")
    # JPEG is lossy: what the network sees is the decoded file
    return {name: files.read_image(root / name) for name in images}


def test_segment_command_on_a_folder(trained, tmp_path, capsys):
    path, model = trained
    root, out = tmp_path / "photos", tmp_path / "segmented"
    images = write_photo_tree(root)
    assert images["sub/portrait.jpg"].shape == (40, 24, 3)
    # fp32: compared below with one image at a time (bf16 rounds differently in other batch shapes)
    code = segment.main(
        [
            str(root),
            "--out",
            str(out),
            "--checkpoint",
            str(path),
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--precision",
            "fp32",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "broken.jpg" in captured.out + captured.err
    assert f"segmented {len(images)} of {len(images) + 1}" in captured.out
    segmenter = Segmenter.from_checkpoint(path, device="cpu")
    expected_names = {
        "a.jpg": "a",
        "sub/a.jpg": "sub/a",
        "sub/deeper/b.PNG": "sub/deeper/b",
        "c.bmp": "c",
        "twin.png": "twin.png",
        "twin.jpg": "twin.jpg",
        "sub/portrait.jpg": "sub/portrait",
    }
    predictions = {}
    for source, name in expected_names.items():
        with Image.open(out / f"{name}.png") as png:
            assert png.mode == "P"
            assert np.array(png.getpalette()[:9]).reshape(3, 3).tolist() == files.voc_palette()[:3].tolist()
            label = np.array(png)
        assert label.shape == images[source].shape[:2]
        assert set(np.unique(label)) <= {0, 1, 2}
        assert (label == segmenter.segment(images[source])).all()
        predictions[source] = label
        with Image.open(out / "overlays" / f"{name}.jpg") as picture:
            height, width = images[source].shape[:2]
            assert picture.width == 2 * width and picture.height > height
            right = np.asarray(picture)[:height, width:].astype(int)
            # the right half is the prediction in the class colours (JPEG: approximately)
            assert np.abs(right - files.voc_palette()[label]).mean() < 25
    assert not (out / "sub" / "broken.png").exists() and not list(out.rglob("notes*"))
    with open(out / "class_shares.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "background", *CLASS_NAMES]
    assert sorted(row[0] for row in rows[1:]) == sorted(expected_names)
    for row in rows[1:]:
        shares = np.array([float(v) for v in row[1:]])
        assert math.isclose(shares.sum(), 1.0, abs_tol=1e-5)
        counts = np.bincount(predictions[row[0]].ravel(), minlength=3) / predictions[row[0]].size
        assert np.allclose(shares, counts, atol=1e-6)
    # with the output inside the input folder, a rerun does not segment the first run's overlays
    inside = root / "out"
    for _ in range(2):
        assert segment.main([str(root), "--out", str(inside), "--checkpoint", str(path), "--device", "cpu"]) == 0
    assert (inside / "overlays" / "a.jpg").exists() and not (inside / "out").exists()
    with open(inside / "class_shares.csv", newline="") as handle:
        assert sorted(row[0] for row in list(csv.reader(handle))[1:]) == sorted(expected_names)


def test_segment_command_errors(trained, tmp_path, capsys, monkeypatch):
    path, _ = trained
    Image.fromarray(random_image(32, 32, 20)).save(tmp_path / "x.png")
    (tmp_path / "empty").mkdir()

    def fails(argv, message):
        assert segment.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("segment.py: error:") and message in err and len(err.splitlines()) == 1

    image, out = str(tmp_path / "x.png"), ["--out", str(tmp_path / "o")]
    fails([image, *out, "--checkpoint", str(tmp_path / "nope.pt")], "nope.pt does not exist")
    fails([str(tmp_path / "empty"), *out, "--checkpoint", str(path)], "no images")
    fails([str(tmp_path / "missing"), *out, "--checkpoint", str(path)], "no such file or folder")
    fails([*out, "--checkpoint", str(path)], "no images given")
    fails([image, *out, "--checkpoint", str(path), "--scales", "1,abc"], "--scales")
    fails([image, *out, "--checkpoint", str(path), "--precision", "fp8"], "--precision")
    fails([image, *out, "--checkpoint", str(path), "--batch-size", "0"], "--batch-size")
    fails([image, *out, "--checkpoint", str(path), "--device", "cpu", "--precision", "fp16"], "fp16")
    fails([image], "--out")

    # the default checkpoint is the one EVAL_DEEPLAB scores (last.pt), else the other one
    import config

    build = config.build_config

    def isolated(preset="demo", overrides=()):
        cfg = build(preset, overrides)
        cfg.paths.checkpoints = str(tmp_path / "checkpoints")
        return cfg

    monkeypatch.setattr(config, "build_config", isolated)
    fails([image, *out], "no trained DeepLab in")
    (tmp_path / "checkpoints" / "deeplab").mkdir(parents=True)
    (tmp_path / "checkpoints" / "deeplab" / "best.pt").write_bytes(path.read_bytes())
    assert segment.main([image, *out, "--device", "cpu"]) == 0
    assert (tmp_path / "o" / "x.png").exists()
    # with both, last.pt is read: an unreadable best.pt beside it goes unnoticed
    (tmp_path / "checkpoints" / "deeplab" / "best.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoints" / "deeplab" / "last.pt").write_bytes(path.read_bytes())
    assert segment.main([image, *out, "--device", "cpu"]) == 0


# ---- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v3_large"])
def test_torchscript_export_matches_pytorch(backbone, tmp_path):
    model = random_deeplab(backbone)
    segmenter = Segmenter(model, CLASS_NAMES, device="cpu")
    result = segmenter.export(tmp_path / "m.pt", "torchscript", (64, 64))
    assert result.verified and result.max_abs_difference <= 1e-4
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(images)
        actual = torch.jit.load(str(result.path))(images)
    assert actual.shape == (1, 3, 64, 64)
    assert expected.abs().max() > 1e-2  # a comparison of real logits, not of zeros
    assert torch.allclose(actual, expected, atol=1e-4, rtol=0)
    metadata = json.loads(result.metadata_path.read_text())
    assert metadata["class_names"] == ["background", *CLASS_NAMES]
    assert metadata["mean"] == list(model.mean) and metadata["input_shape"] == [1, 3, 64, 64]


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v3_large"])
def test_onnx_export_matches_pytorch(backbone, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install -r requirements-export.txt)")
    onnxruntime = pytest.importorskip(
        "onnxruntime", reason="checking the ONNX export needs onnxruntime (pip install -r requirements-export.txt)"
    )
    model = random_deeplab(backbone)
    segmenter = Segmenter(model, CLASS_NAMES, device="cpu")
    result = segmenter.export(tmp_path / "m.onnx", "onnx", (64, 64))
    assert result.verified and result.max_abs_difference <= 1e-4
    # a batch of two: the batch axis is left free
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    actual = session.run(["logits"], {"images": images.numpy()})[0]
    assert actual.shape == (2, 3, 64, 64) and np.abs(expected).max() > 1e-2
    assert np.abs(actual - expected).max() <= 1e-4


def test_segment_command_exports(trained, tmp_path, capsys):
    path, _ = trained
    out = tmp_path / "exported"
    assert (
        segment.main(
            [
                "--export",
                "torchscript",
                "--export-size",
                "48,64",
                "--out",
                str(out),
                "--checkpoint",
                str(path),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "matches PyTorch within" in capsys.readouterr().out
    traced = torch.jit.load(str(out / "deeplab.torchscript.pt"))
    with torch.no_grad():
        assert traced(torch.zeros(1, 3, 48, 64)).shape == (1, 3, 48, 64)
    assert json.loads((out / "deeplab.torchscript.pt.json").read_text())["input_shape"] == [1, 3, 48, 64]
