"""The mixing engine: sources in, exact mixed steps out (see :mod:`mixbatch.loader.loader`)."""

from __future__ import annotations

from mixbatch.loader.loader import MixedLoader, Step, build_shaper, load_state, save_state

__all__ = ["MixedLoader", "Step", "build_shaper", "load_state", "save_state"]
