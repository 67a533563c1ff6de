#!/usr/bin/env bash
# Build Horovod 0.28.1 (gloo, PyTorch) into .venv for lan.backend=horovod; see docs/horovod.md.
# Idempotent: does nothing when `.venv/bin/python -c 'import horovod.torch'` already works.
# Horovod's CMake forces -std=c++14, which torch >= 2.1 headers reject: a toolchain file swaps the
# C++14 flag for C++17 (about 2.5 min on 2 cores). Needs g++ and CMake >= 3.21 (Debian: cmake g++).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import horovod.torch' 2>/dev/null; then
    echo "[horovod] already importable in $venv"
    exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 wheel setuptools
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
cat >"$tools/cxx17-rules.cmake" <<'CMAKE'
set(CMAKE_CXX14_STANDARD_COMPILE_OPTION "-std=c++17")
set(CMAKE_CXX14_EXTENSION_COMPILE_OPTION "-std=gnu++17")
CMAKE
echo "set(CMAKE_USER_MAKE_RULES_OVERRIDE_CXX $tools/cxx17-rules.cmake)" >"$tools/cxx17-toolchain.cmake"
echo "[horovod] building horovod 0.28.1 against $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
CMAKE_TOOLCHAIN_FILE="$tools/cxx17-toolchain.cmake" CMAKE_POLICY_VERSION_MINIMUM=3.5 \
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
HOROVOD_WITHOUT_MPI=1 MAKEFLAGS="-j$(nproc)" \
    "$venv/bin/pip" install -q --no-build-isolation --no-cache-dir "horovod==0.28.1"
"$venv/bin/python" -c 'import horovod, horovod.torch as hvd; print("[horovod]", horovod.__version__, "gloo:", hvd.gloo_built())'
