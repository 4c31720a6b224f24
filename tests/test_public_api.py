from __future__ import annotations

import importlib

import mixbatch

PACKAGES = ["mixbatch", "mixbatch.io", "mixbatch.shape", "mixbatch.plan", "mixbatch.torch",
            "mixbatch.proxy", "mixbatch.mixture.policies", "mixbatch.audit",
            "mixbatch.mixup", "mixbatch.mixup.losses"]


def test_all_is_importable() -> None:
    """Every public name exists; ruff's RUF022 keeps each ``__all__`` sorted."""
    for name in PACKAGES:
        mod = importlib.import_module(name)
        names = list(mod.__all__)
        assert len(set(names)) == len(names), f"{name}.__all__ repeats a name"
        for attr in names:
            assert hasattr(mod, attr), f"{name}.{attr} is listed but missing"


def test_top_level_surface() -> None:
    assert {"load_config", "open_store", "MixedLoader", "ConfigError"} <= set(mixbatch.__all__)


def test_the_package_ships_its_type_annotations() -> None:
    """PEP 561: a ``py.typed`` marker beside the package, listed as package data."""
    import tomllib
    from pathlib import Path

    import mixbatch

    assert (Path(mixbatch.__file__).parent / "py.typed").is_file()
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["mixbatch"]
