"""Deterministic choices for the fake model's answers: from BLAKE2 hashes of a key, not `random`,
so they are stable across Python versions and processes."""

import hashlib


class Draws:
    """A stream of deterministic integers derived from a key."""

    def __init__(self, *parts: str) -> None:
        self._key = "\x1f".join(parts).encode()
        self._block = 0
        self._buf = b""
        self._pos = 0

    def below(self, n: int) -> int:
        if self._pos + 4 > len(self._buf):
            self._buf = hashlib.blake2b(self._key, digest_size=64, salt=self._block.to_bytes(16, "big")).digest()
            self._block += 1
            self._pos = 0
        value = int.from_bytes(self._buf[self._pos : self._pos + 4], "big")
        self._pos += 4
        return value % n

    def fraction(self) -> float:
        return self.below(1 << 30) / float(1 << 30)
