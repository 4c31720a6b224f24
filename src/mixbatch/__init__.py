"""mixbatch: decide and build what goes into every training batch."""

from mixbatch.config import Config, load_config
from mixbatch.errors import (
    ConfigError,
    DataError,
    MixbatchError,
    MixbatchInternalError,
    StateError,
    StoreError,
)
from mixbatch.loader.loader import MixedLoader
from mixbatch.store import TokenStore, open_store
from mixbatch.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "ByteTokenizer",
    "Config",
    "ConfigError",
    "DataError",
    "HFTokenizer",
    "MixbatchError",
    "MixbatchInternalError",
    "MixedLoader",
    "StateError",
    "StoreError",
    "TokenStore",
    "load_config",
    "load_tokenizer",
    "open_store",
]
