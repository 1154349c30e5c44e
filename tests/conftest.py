"""Shared pytest fixtures: the shared real-data folder and the bundled tokenizer."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project is a set of flat modules in the repository root, not a package, with the tools in scripts/ and
# experiments/: make them importable however pytest is started.
for path in (ROOT, ROOT / "scripts", ROOT / "experiments"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

if os.environ.get("PYTEST_XDIST_WORKER"):  # scripts/run_tests.sh runs a worker per core: one thread each
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def SHARED_DATA():
    """The shared data folder next to the checkout (../shared/data); tests using it skip without it."""
    path = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"no shared data folder at {path}")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled all-MiniLM-L6-v2 (BERT uncased) fast tokenizer; loads in under a second."""
    import transformers

    import utils
    return transformers.AutoTokenizer.from_pretrained(utils.default_model_path())
