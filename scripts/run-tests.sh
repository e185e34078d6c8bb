#!/usr/bin/env bash
# Set up (dependencies, the test template) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
python3 -m pytest -q
