"""Batched prompting for inference: many items per prompt under a token budget, permutation
voting, early stopping ("BatchPrompt: Accomplish more with less"); see :mod:`.batchprompt`."""

from mixbatch.prompting.batchprompt import (
    BatchPromptResult,
    BatchPromptSettings,
    batch_prompt,
    format_prompt,
    parse_answers,
)
from mixbatch.prompting.pack import pack_prompts
from mixbatch.prompting.simulated import PositionBiasedModel

__all__ = [
    "BatchPromptResult",
    "BatchPromptSettings",
    "PositionBiasedModel",
    "batch_prompt",
    "format_prompt",
    "pack_prompts",
    "parse_answers",
]
