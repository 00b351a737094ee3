#!/usr/bin/env bash
# DeepLab training variants at the gpu profile's lengths on one CUDA GPU, on pseudo labels made
# elsewhere (benchmarks/deeplab_variants.py): each variant's DeepLab and one on every real mask, for
# seeds 0 and 1, the two seeds in two processes side by side (a DeepLab of this size leaves most of
# the GPU idle; the CRF of the evaluation runs on the CPU). Made here, where ../shared is:
#
#     .venv/bin/python -m benchmarks.pack_gpu_data --stage-outputs bench/s5/full/gt0   # -> .gpu_data/
#
# then on the GPU machine, from the project root, with .gpu_data carried along:
#
#     bash benchmarks/gpu_deeplab_variants.sh base= ignore20="deeplab.ignore_hardest=0.2"
#
# Environment: GPU_PYTHON (default python3), GPU_DATA (default .gpu_data), GPU_PROFILE_SECONDS (the
# whole script stops after this many seconds, default 570), GPU_FULL (1, the default: also the
# full-supervision DeepLabs; 0: the variants only). The trainings go to bench/deeplab_variants_gpu;
# the rows, the table and the logs are also copied to $OUT when it is set (the lent machines return
# what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=bench/deeplab_variants_gpu
if [ ! -f "${GPU_DATA:-.gpu_data}/stage_outputs/tmp/guide/record.json" ]; then
    echo "error: ${GPU_DATA:-.gpu_data} holds no pseudo labels: pack it with --stage-outputs RUN" >&2
    exit 2
fi
. benchmarks/gpu_setup.sh

mkdir -p "$RESULTS"
pids=()
for seed in 0 1; do
    timeout --signal=INT "$LIMIT" "$PY" -m benchmarks.deeplab_variants --profile gpu --shared "$DATA" \
        --from "$DATA/stage_outputs" --out "$RESULTS" --seeds "$seed" $([ "${GPU_FULL:-1}" = 1 ] && echo --full) --set runtime.num_workers=6 "$@" \
        > "$RESULTS/seed$seed.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
"$PY" -m benchmarks.deeplab_variants --report-only --out "$RESULTS" | tee "$RESULTS/table.md"
if [ -n "${OUT:-}" ]; then cp "$RESULTS"/rows.jsonl "$RESULTS"/table.md "$RESULTS"/seed*.log "$OUT"/ 2>/dev/null || true; fi
echo "deeplab variants: exit $status after $(( $(date +%s) - started )) s"
exit "$status"
