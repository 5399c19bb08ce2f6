#!/usr/bin/env bash
# Install iap into ./.venv from scratch. Usage: bash install.sh [dev]
# torch is pinned first: a looser spec resolves to GBs of CUDA wheels on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")"
extra=""
if [ "${1:-}" = "dev" ]; then extra="[dev]"; fi
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".${extra}"
# img2dataset pulls the 2018 'dataclasses' backport, which shadows the stdlib inside Prefect's server.
.venv/bin/pip uninstall -y -q dataclasses || true
.venv/bin/python -c "import torch, diffusers, prefect, iap; print('iap installed: torch', torch.__version__, '| prefect', prefect.__version__)"
