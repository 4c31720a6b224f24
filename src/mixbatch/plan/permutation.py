"""Keyed pseudo-random permutations of ``[0, N)`` with O(1) memory and random access.

``permute(idx, n, key)`` maps positions to items: the item at position ``p`` of the shuffled
order is ``permute(p, n, key)``. Nothing of size N is stored, so the order of a trillion-item
source costs nothing to keep, any position can be looked up directly (resume, random access
from any worker), and a new order for every epoch is just a new key (DESIGN invariant 2).

Construction: a balanced Feistel network on the smallest domain ``2**(2h) >= n`` (``h`` bits
per half, at least 1), which is a bijection of that domain for any round function, followed by
cycle walking (Black & Rogaway, "Ciphers with arbitrary finite domains", CT-RSA 2002): a value
that lands outside ``[0, n)`` is encrypted again until it lands inside. Because the domain is
less than ``4 n``, the expected number of walks is below 4. The round function is the
SplitMix64 finaliser of ``half + round_key``; round keys come from the key by SplitMix64.
Everything is vectorised: each walk only touches the lanes still out of range.

This is a statistical shuffle, not a cipher.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mixbatch.errors import ConfigError

__all__ = ["derive_key", "inverse", "keyed_order", "permutation", "permute", "source_epoch_key"]

_ROUNDS = 6
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


def derive_key(seed: int, *parts: int | str) -> int:
    """A 64-bit key from a seed and labels, stable across processes, machines and Pythons.

    The parts are encoded canonically (a type tag, a length, then the decimal digits of an int
    or the UTF-8 bytes of a str) and hashed with BLAKE2b; Python's ``hash`` is never used.
    ``derive_key(seed, "web", 3)`` is the key of source ``web`` in epoch 3.
    """
    h = hashlib.blake2b(digest_size=8, person=b"mixbatch.key.v1")
    for i, part in enumerate((seed, *parts)):
        if isinstance(part, bool) or not isinstance(part, int | str | np.integer):
            name = "seed" if i == 0 else f"parts[{i - 1}]"
            raise ConfigError(f"{name}: key parts must be int or str, got {part!r}")
        if isinstance(part, str):
            tag, data = b"s", part.encode("utf-8")
        else:
            tag, data = b"i", str(int(part)).encode("ascii")
        h.update(tag + len(data).to_bytes(8, "little") + data)
    return int.from_bytes(h.digest(), "little")


def source_epoch_key(seed: int, source: str, epoch: int) -> int:
    """The shuffle key of ``source`` in ``epoch``: a new order every epoch."""
    return derive_key(seed, source, epoch)


def _splitmix_keys(key: int) -> np.ndarray:
    out = []
    state = key
    for _ in range(_ROUNDS):
        state = (state + _GOLDEN) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=np.uint64)


def _splitmix_first(key: int) -> int:
    """``_splitmix_keys(key)[0]``, in plain integers."""
    z = (key + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _round(half: np.ndarray, round_key: np.uint64, shift: np.uint64) -> np.ndarray:
    z = half + round_key  # wraps modulo 2**64
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z ^= z >> _S31
    return z >> shift  # the top h bits


class _Feistel:
    def __init__(self, n: int, key: int) -> None:
        bits = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self.half = np.uint64(bits)
        self.mask = np.uint64((1 << bits) - 1)
        self.shift = np.uint64(64 - bits)
        self.keys = _splitmix_keys(key)

    def forward(self, x: np.ndarray) -> np.ndarray:
        left = x >> self.half
        right = x & self.mask
        for k in self.keys:
            left, right = right, left ^ _round(right, k, self.shift)
        return (left << self.half) | right

    def backward(self, x: np.ndarray) -> np.ndarray:
        left = x >> self.half
        right = x & self.mask
        for k in self.keys[::-1]:
            left, right = right ^ _round(left, k, self.shift), left
        return (left << self.half) | right


def _check_n_key(n: int, key: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ConfigError(f"n: must be an integer >= 0, got {n!r}")
    if n > 1 << 62:
        raise ConfigError(f"n: must be at most 2**62, got {n}")
    if isinstance(key, bool) or not isinstance(key, int | np.integer) or not 0 <= key <= _MASK64:
        raise ConfigError(f"key: must be an integer in [0, 2**64), got {key!r}")


def _check(idx: np.ndarray | int, n: int, key: int) -> tuple[np.ndarray, bool]:
    _check_n_key(n, key)
    scalar = np.ndim(idx) == 0
    arr = np.asarray(idx)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"idx: must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ConfigError(
            f"idx: every index must be in [0, {n}), got range [{arr.min()}, {arr.max()}]"
        )
    return arr, scalar


def _walk(arr: np.ndarray, n: int, step) -> np.ndarray:
    x = step(arr.astype(np.uint64))
    limit = np.uint64(n)
    todo = np.flatnonzero(x >= limit)
    while todo.size:
        y = step(x[todo])
        x[todo] = y
        todo = todo[y >= limit]
    return x.astype(np.int64)


def permute(idx: np.ndarray | int, n: int, key: int) -> np.ndarray:
    """The item at each position in ``idx`` of the order of ``[0, n)`` keyed by ``key``.

    ``idx`` is an int or an integer array of positions in ``[0, n)``; the result has its
    shape, dtype int64. A bijection of ``[0, n)`` for every ``n`` (0 and 1 included) and key.
    """
    arr, scalar = _check(idx, n, key)
    if arr.size == 0 or n == 1:
        out = np.zeros_like(arr)
    else:
        out = _walk(arr.ravel(), n, _Feistel(n, key).forward).reshape(arr.shape)
    return out[()] if scalar else out


def inverse(idx: np.ndarray | int, n: int, key: int) -> np.ndarray:
    """The position of each item in ``idx``: ``inverse(permute(p, n, k), n, k) == p``."""
    arr, scalar = _check(idx, n, key)
    if arr.size == 0 or n == 1:
        out = np.zeros_like(arr)
    else:
        out = _walk(arr.ravel(), n, _Feistel(n, key).backward).reshape(arr.shape)
    return out[()] if scalar else out


def permutation(n: int, key: int) -> np.ndarray:
    """The whole order as an array (``permute(arange(n))``); O(n) memory, for small n."""
    return permute(np.arange(n, dtype=np.int64), n, key)


def keyed_order(n: int, key: int) -> np.ndarray:
    """A keyed pseudo-random order of ``[0, n)`` as an array, in one vectorised pass.

    For small ``n`` that a caller holds whole anyway (the rows of a packing window): the order
    is the argsort of the SplitMix64 finaliser of ``i + key'`` (``key'`` from ``key``), ties
    (probability about ``n² / 2**65``) broken by index. Cheaper than :func:`permutation`, which
    walks cycles; it has no random access or inverse.
    """
    _check_n_key(n, key)
    z = np.arange(n, dtype=np.uint64) + np.uint64(_splitmix_first(int(key)))
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z ^= z >> _S31
    return np.argsort(z, kind="stable")
