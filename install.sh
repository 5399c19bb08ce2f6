#!/usr/bin/env bash
# Install iap into ./.venv from scratch. Usage: bash install.sh [EXTRAS]   (bash install.sh lock: see below)
# EXTRAS: comma-separated, e.g. dev (the test suite; it includes every engine), or dask,ray,spark.
# torch is pinned first: a looser spec resolves to GBs of CUDA wheels on a CPU machine. Every other package
# is installed at the version in constraints.txt, the set the tests ran with.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "lock" ]; then  # rewrite constraints.txt from ./.venv (after installing newer versions in it)
  { sed -n '1,2p' constraints.txt; .venv/bin/pip freeze --exclude-editable | grep -v -E '^(torch|dataclasses)=='; } \
    > constraints.txt.new && mv constraints.txt.new constraints.txt
  exit 0
fi
extra=""
if [ -n "${1:-}" ]; then extra="[$1]"; fi
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0 ${IAP_TORCH_INDEX:+--index-url "$IAP_TORCH_INDEX"}
.venv/bin/pip install -q -c constraints.txt -e ".${extra}"
# img2dataset pulls the 2018 'dataclasses' backport, which shadows the stdlib inside Prefect's server.
.venv/bin/pip uninstall -y -q dataclasses || true
.venv/bin/python -c "import torch, diffusers, prefect, iap; print('iap installed: torch', torch.__version__, '| prefect', prefect.__version__)"
