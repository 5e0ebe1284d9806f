#!/usr/bin/env bash
# The compile tests under the GPU machines' torch (2.11.0 there, 2.14.1 in .venv), on this CPU,
# before spending device time: Dynamo traces differently from version to version. torch 2.11
# cannot trace copy.deepcopy, which broke the compiled step on an H100 (2026-11-28) while CI's
# torch 2.14 passed the same test.
#
#   bash bench/device_torch_check.sh                  # tests/perf/test_compile.py, slow tests too
#   bash bench/device_torch_check.sh tests/perf -k fp32   # pytest arguments replace the default
#   TORCH_VERSION=2.12.0 bash bench/device_torch_check.sh
#
# The torch wheel (a CUDA build, about 530 MB) goes into a folder of its own, without its
# dependencies, ahead of .venv on the path: .venv lends the rest, its NVIDIA libraries included.
set -eu
VERSION=${TORCH_VERSION:-2.11.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
TARGET=${DEVICE_TORCH_DIR:-/tmp/ckd-torch-$VERSION}
[ -x "$PY" ] || { echo "device_torch_check: $PY is missing: run make install first" >&2; exit 2; }
if [ ! -f "$TARGET/.installed" ]; then
  rm -rf "$TARGET"
  "$PY" -m pip install -q --no-deps --target "$TARGET" "torch==$VERSION"
  touch "$TARGET/.installed"
fi
export PYTHONPATH=$TARGET:$ROOT
"$PY" -c "import torch; print('torch', torch.__version__, 'from', torch.__file__)"
if [ $# -eq 0 ]; then
  set -- tests/perf/test_compile.py -m "slow or not slow"
fi
cd "$ROOT"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
