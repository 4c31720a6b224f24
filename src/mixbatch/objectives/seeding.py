"""``np.random.default_rng(key)`` for many keys at once: NumPy's ``SeedSequence`` hashing
vectorised over the keys, and the ``PCG64`` state it seeds.

``default_rng(key)`` is ``Generator(PCG64(SeedSequence(key)))``: the key's 32-bit words are
hashed into a pool of four words (``SeedSequence``'s ``mix_entropy``, after Melissa O'Neill's
``seed_seq_fe`` in "PCG: A Family of Simple Fast Space-Efficient Statistically Good Algorithms
for Random Number Generation"), the pool gives four 64-bit words (``generate_state(4,
uint64)``), and ``PCG64`` takes the first two as its initial state and the last two as its
stream (``pcg_setseq_128_srandom_r``: ``inc = seq·2 + 1``, one step, add the state, one step).
NumPy documents ``SeedSequence`` and ``PCG64`` seeding as stable across versions; the tests
check both against NumPy's own for random keys. Creating a generator per row costs tens of
microseconds in Python; here the hashing of every row is a few array operations, and each row
only sets the state of one reused generator.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["row_generators", "seed_words"]

_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = np.uint64(0xFFFFFFFF)
_S16 = np.uint64(16)
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341
_M128 = (1 << 128) - 1


def seed_words(keys: np.ndarray) -> np.ndarray:
    """``SeedSequence(k).generate_state(4, np.uint64)`` of every key ``k`` (64-bit), ``(R, 4)``."""
    keys = np.asarray(keys, dtype=np.uint64)
    h = _INIT_A  # the hash constant moves the same way for every key

    def hashmix(v: np.ndarray) -> np.ndarray:
        nonlocal h
        v = (v ^ np.uint64(h)) & _M32
        h = (h * _MULT_A) & 0xFFFFFFFF
        v = (v * np.uint64(h)) & _M32
        return v ^ (v >> _S16)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = (np.uint64(_MIX_L) * x - np.uint64(_MIX_R) * y) & _M32  # wraps mod 2^64, then 2^32
        return r ^ (r >> _S16)

    zero = np.zeros(keys.shape, dtype=np.uint64)
    # the key's words, low first; a key below 2^32 is one word (the pool pads with 0 alike)
    pool = [hashmix(keys & _M32), hashmix(keys >> np.uint64(32)), hashmix(zero), hashmix(zero)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    words = np.empty((keys.size, 8), dtype=np.uint64)
    hb = _INIT_B
    for i in range(8):
        v = pool[i % 4] ^ np.uint64(hb)
        hb = (hb * _MULT_B) & 0xFFFFFFFF
        v = (v * np.uint64(hb)) & _M32
        words[:, i] = v ^ (v >> _S16)
    return words[:, 0::2] | (words[:, 1::2] << np.uint64(32))


def _pcg64_state(words: list[int]) -> dict[str, object]:
    seed = (words[0] << 64) | words[1]
    inc = ((((words[2] << 64) | words[3]) << 1) | 1) & _M128
    state = (((inc + seed) & _M128) * _PCG_MULT + inc) & _M128
    return {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
            "has_uint32": 0, "uinteger": 0}


def row_generators(keys: list[int]) -> Iterator[np.random.Generator]:
    """One generator per key, each in the state ``np.random.default_rng(key)`` starts in (the
    same generator object, reseeded: use each before taking the next)."""
    words = seed_words(np.asarray(keys, dtype=np.uint64)).tolist() if keys else []
    bits = np.random.PCG64(0)
    gen = np.random.Generator(bits)
    for w in words:
        bits.state = _pcg64_state(w)
        yield gen
