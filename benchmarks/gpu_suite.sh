#!/usr/bin/env bash
# The GPU suite in one command (benchmarks/gpu_suite.py says what it runs and writes).
#
#   bash benchmarks/gpu_suite.sh --fetch-wheels      # here, once: the wheels the GPU machine lacks, into .gpu-wheels/
#   bash benchmarks/gpu_suite.sh [--out FILE] [--budget S] [--tiny] [--only a,b] [--rev REV]   # there
#
# The GPU machine reaches no package registry and lacks pydantic (the spec models); every other package the
# suite imports is there. `--fetch-wheels` downloads pydantic and what it needs, for CPython 3.12 on x86-64
# Linux, into the git-ignored .gpu-wheels/ (about 3 MiB); the session sends them with the device tool's
# `carry: [".gpu-wheels"]`, and the suite installs them into a private folder when pydantic is missing.
# The suite runs from the working tree (PYTHONPATH=.): nothing is installed into the machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.gpu-wheels
SITE=${MUE_SUITE_SITE:-/tmp/mue-suite-site}
# pinned to what the project is tested with; pydantic pins pydantic-core exactly
PACKAGES=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          typing-extensions==4.16.0)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    platforms=()
    for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        platforms+=(--platform "$tag")
    done
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$WHEELS" "${PACKAGES[@]}"
    ls -l "$WHEELS"
    exit 0
fi

if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
    if ! ls "$WHEELS"/pydantic-*.whl >/dev/null 2>&1; then
        echo "pydantic is missing and $WHEELS/ holds no wheels: run 'bash benchmarks/gpu_suite.sh --fetch-wheels'" \
             "where pip reaches PyPI, and carry $WHEELS" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
