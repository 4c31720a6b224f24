"""Helpers that tie the batch to the rest of training: learning rates by tokens and mixture
stage (:mod:`.lr`), mixture-of-experts load balancing over the global batch (:mod:`.balance`),
the gradient noise scale (:mod:`.noise`), hard-batch replay (:mod:`.replay`), large-batch
optimisation (:mod:`.lamb`, :mod:`.ghost_bn`) and energy per run (:mod:`.energy`)."""
