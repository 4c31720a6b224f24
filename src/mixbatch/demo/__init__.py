"""``mixbatch demo``: the built-in corpus (:mod:`mixbatch.demo.corpus`) and the demo's
mixture search (:mod:`mixbatch.demo.search`)."""

from __future__ import annotations

from mixbatch.demo.corpus import (
    DEMO_STAGE_STEPS,
    MAN_ROOT,
    Domain,
    DomainSummary,
    build_corpus,
    demo_config,
    domains,
    generated_documents,
)

__all__ = ["DEMO_STAGE_STEPS", "MAN_ROOT", "Domain", "DomainSummary", "build_corpus",
           "demo_config", "domains", "generated_documents"]
