#!/usr/bin/env bash
# The tests: installs what is missing (requirements-dev.txt, see scripts/setup.sh), then runs them, one test file
# per core at a time (pytest-xdist; each worker uses one thread). Extra arguments go to pytest instead, in one
# process, e.g. `bash scripts/run_tests.sh tests/test_train.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev
if [ $# -eq 0 ]; then set -- -n auto --dist loadfile tests; fi
python -m pytest -q "$@"
