# Set-up shared by the scripts that run on a lent GPU machine (sourced, not run): checks that
# $DATA holds packed data and that torch sees a GPU, then installs the packed wheels and builds
# pydensecrf into a private folder put first on PYTHONPATH (nothing is installed into the system).
# Environment: GPU_PYTHON (default python3), GPU_DATA (the packed folder, benchmarks/pack_gpu_data.py;
# default .gpu_data), GPU_PROFILE_SECONDS (the whole script, set-up included, default 570). Sets PY,
# DATA and LIMIT: the seconds left for the work, so that a 600 s command limit still returns what
# it wrote.
PY=${GPU_PYTHON:-python3}
DATA=${GPU_DATA:-.gpu_data}
TOTAL_SECONDS=${GPU_PROFILE_SECONDS:-570}
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
if [ "$LIMIT" -lt 30 ]; then  # timeout 0 would mean no limit at all
    echo "error: the set-up left $LIMIT of GPU_PROFILE_SECONDS=$TOTAL_SECONDS s: raise it" >&2
    exit 2
fi
