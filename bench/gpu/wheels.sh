#!/usr/bin/env bash
# Make bench/gpu/wheels/: the wheels bench/gpu/check.sh installs on a GPU machine with no network (Python 3.12,
# x86-64 Linux; torch, transformers, peft and accelerate already there). Run on a machine with network, from
# the repository, with the project's venv installed (versions are pinned to it):
#
#   bash bench/gpu/wheels.sh             # what the project's modules import (~5 MB)
#   bash bench/gpu/wheels.sh --trl       # plus TRL 1.12.0 and datasets, for the TRL rows (~60 MB: pyarrow, pandas)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV_PY=${VENV_PY:-${RLHF_STATE_DIR:-.state}/venv/bin/python}
OUT=bench/gpu/wheels
PACKAGES="pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
typing-extensions kafka-python protobuf tenacity prometheus-client"
if [ "${1:-}" = "--trl" ]; then
    PACKAGES="$PACKAGES trl datasets pyarrow pandas python-dateutil tzdata pytz dill multiprocess xxhash fsspec"
fi
mkdir -p "$OUT"
pins=$("$VENV_PY" -m pip freeze 2>/dev/null)
for name in $PACKAGES; do
    # the venv's version of each package (pip normalises - and _ alike)
    pin=$(printf '%s\n' "$pins" | grep -i -E "^${name//-/[-_]}==" || true)
    "$VENV_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$OUT" "${pin:-$name}"
done
du -sh "$OUT"
