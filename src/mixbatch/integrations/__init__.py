"""Drop-ins for training stacks: Hugging Face (:mod:`mixbatch.integrations.hf`).

Each submodule imports its library on use only; none of them is a dependency of mixbatch.
"""
