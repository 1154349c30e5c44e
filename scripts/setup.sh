#!/usr/bin/env bash
# Install what the project needs and is missing; when everything is there it only checks (well under a second).
#
#   bash scripts/setup.sh [dev]      run directly
#   source scripts/setup.sh [dev]    from another script (scripts/run_tests.sh, scripts/run_demo.sh); safe under
#                                    `set -euo pipefail`: it changes no shell option and no directory, and a failed
#                                    install makes the `source` fail
#
# What it installs:
#   torch   when none is importable: the CPU build, torch==2.13.0 (a plain `pip install torch` can fetch a
#           multi-GB CUDA build). DOCRE_TORCH overrides the requirement, e.g. DOCRE_TORCH=torch on a GPU machine.
#   then    requirements.txt (the main job), or requirements-dev.txt (the tests) with the argument `dev`.
# The check reads the installed distributions' versions against the requirement files, so an old version of a
# package counts as missing. PYTHON picks the interpreter (default: python, else python3); when only python3
# exists, sourcing this file also defines a shell function `python` that runs it.

_docre_setup() {
  local root python reqs missing
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  python=${PYTHON:-}
  if [ -z "$python" ]; then
    if command -v python >/dev/null 2>&1; then python=python; else python=python3; fi
  fi
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup: error: no Python interpreter found (tried ${PYTHON:-python and python3})" >&2
    return 1
  fi
  reqs=$root/requirements.txt
  [ "${1:-}" = dev ] && reqs=$root/requirements-dev.txt
  # Prints the requirements that are not satisfied (one a line); nothing when all are.
  missing=$("$python" - "$reqs" <<'EOF'
import importlib.metadata as md
import os
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv has no packaging, but pip carries a copy
    from pip._vendor.packaging.requirements import Requirement


def lines(path):
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r"):
                yield from lines(os.path.join(os.path.dirname(path), line[2:].strip()))
            elif line:
                yield line


for line in lines(sys.argv[1]):
    req = Requirement(line)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        print(req.name)
        continue
    if not req.specifier.contains(version, prereleases=True):
        print(req.name)
EOF
  ) || { echo "setup: error: cannot check $reqs with $python" >&2; return 1; }
  if [ -n "$missing" ]; then
    echo "setup: installing what is missing from $(basename "$reqs"): $(echo $missing)" >&2
    if ! "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
      echo "setup: torch: ${DOCRE_TORCH:-torch==2.13.0} (CPU build; DOCRE_TORCH=torch for the CUDA one)" >&2
      "$python" -m pip install "${DOCRE_TORCH:-torch==2.13.0}" || {
        echo "setup: error: pip could not install torch (a system Python that refuses pip installs needs a" \
             "virtual environment first: python3 -m venv .venv && . .venv/bin/activate)" >&2
        return 1; }
    fi
    "$python" -m pip install -r "$reqs" || {
      echo "setup: error: pip could not install $reqs (a system Python that refuses pip installs needs a" \
           "virtual environment first: python3 -m venv .venv && . .venv/bin/activate)" >&2
      return 1; }
  fi
  if [ "$python" = python3 ] && ! command -v python >/dev/null 2>&1; then
    python() { python3 "$@"; }
  fi
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  _docre_setup "$@"
  exit $?
fi
if ! _docre_setup "$@"; then
  unset -f _docre_setup
  return 1
fi
unset -f _docre_setup
