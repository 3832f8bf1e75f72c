"""The run registry (registry.toml): the runs, their parameters per profile, the original's figures."""

from __future__ import annotations

import math
import tomllib
from functools import cache

from lib.paths import REGISTRY_FILE

PROFILES = ("full", "quick")
LOGGED_COLUMNS = ("epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "logged_at")


@cache
def load() -> dict:
    with open(REGISTRY_FILE, "rb") as f:
        return tomllib.load(f)


def run_names() -> list[str]:
    """Every run, in the original project's order."""
    runs = load()["runs"]
    return sorted(runs, key=lambda name: runs[name]["order"])


def run_entry(name: str) -> dict:
    runs = load()["runs"]
    if name not in runs:
        raise KeyError(f"unknown run {name!r}; the registry ({REGISTRY_FILE.name}) has: {', '.join(run_names())}")
    return runs[name]


def run_parameters(name: str, profile: str) -> dict:
    """A run's parameters in a profile: defaults, then the run's own, then its profile overrides."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)} (or 'auto')")
    entry = run_entry(name)
    params = dict(load()["defaults"])
    params.update({k: v for k, v in entry.items() if k not in ("reported", "why", *PROFILES)})
    if profile != "full":
        params.update(entry.get(profile, {}))
    return params


def reported(name: str) -> dict:
    """What the original reported for a run; NaN where it reported nothing."""
    figures = dict(run_entry(name)["reported"])
    figures["logged_epochs"] = [dict(zip(LOGGED_COLUMNS, row)) for row in figures.get("logged_epochs", [])]
    return figures


def is_reported(value) -> bool:
    return not (isinstance(value, float) and math.isnan(value))


def final_run() -> str:
    return load()["final_run"]
