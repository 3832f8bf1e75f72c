"""Where things live. Relative paths in parameters are read from the project root, whatever the cwd."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REGISTRY_FILE = PROJECT_ROOT / "registry.toml"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "synthetic"
# The default set's second test set: new tissue stained as another laboratory stains (lib/data/synthetic.py).
DEFAULT_OTHER_LAB_DIR = PROJECT_ROOT / "data" / "synthetic-other-lab"
# Decoded uint8 tiles, one .npy per data set and tile size; HISTO_TILE_CACHE moves it (the tests do).
TILE_CACHE_DIR = Path(os.environ.get("HISTO_TILE_CACHE", PROJECT_ROOT / "data" / "cache"))
RUNS_DIR = PROJECT_ROOT / "runs"
REPORTS_DIR = PROJECT_ROOT / "reports"
EXECUTED_DIR = REPORTS_DIR / "executed"
KERNEL_NAME = "histo-workbook"  # registered by the Makefile; every notebook runs in it


def resolve(path: str | Path) -> Path:
    """An absolute path: relative ones are taken from the project root, so a notebook run from
    notebooks/ (JupyterLab) and one run by papermill from the root mean the same folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def pythonpath_with_project(pythonpath: str) -> str:
    """A PYTHONPATH value with the project root first (once), so that a child process (a notebook's
    kernel, torchrun's ranks) imports lib/ from this checkout whatever its site-packages say."""
    kept = [p for p in pythonpath.split(os.pathsep) if p and p != str(PROJECT_ROOT)]
    return os.pathsep.join([str(PROJECT_ROOT), *kept])
