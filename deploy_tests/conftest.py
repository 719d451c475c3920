"""Shared fixtures. The real CIFAR-10 archive lives in ../shared/data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    return CIFAR_ARCHIVE


@pytest.fixture(scope="session")
def synthetic_data():
    from ccpcsa.data import load_data

    return load_data("synthetic", seed=0, progress=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run only where torch sees a CUDA GPU; elsewhere they are skipped with one reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
