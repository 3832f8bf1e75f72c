"""Shared fixtures: a tiny generated data set in the course layout, made once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))  # so that `import lib` works however pytest is started

from lib.synthetic import SyntheticSpec, generate  # noqa: E402

TINY_SPEC = SyntheticSpec(n_train=96, n_test=24, seed=11)
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "lc25000-colon-2k"
SEED_EPOCHS = PROJECT_ROOT.parent / "shared" / "seed" / "reported_epochs.csv"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """96 labelled and 24 test tiles, 256x256, in the course layout, with test labels."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", TINY_SPEC, workers=2)
