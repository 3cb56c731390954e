"""The plaintext of a creator's key, wrapped so that stray prints, logs and serialisers only see a masked form."""

from __future__ import annotations

KEY_PREFIX = "sk-or-v1-"


def mask_key(key: str) -> str:
    """The form shown to people: ``sk-or-v1-…a1b2`` (prefix and the last four characters)."""
    prefix = KEY_PREFIX if key.startswith(KEY_PREFIX) else key[:3]
    return f"{prefix}…{key[-4:]}" if len(key) >= len(prefix) + 8 else f"{prefix}…"


class SecretKey(str):
    """A string whose value IS the masked form; the real key comes only from ``.reveal()``.

    Because the string content is the mask, str(), repr(), f-strings, %-formatting, json.dumps, pydantic and
    pickle all produce the mask. Only an explicit ``.reveal()`` (for the Authorization header) gives the key.
    """

    def __new__(cls, plaintext: str) -> SecretKey:
        self = super().__new__(cls, mask_key(plaintext))
        # A closure, not an attribute holding the text: vars(), debuggers and rich tracebacks print the function.
        self._reveal = lambda: plaintext
        return self

    def reveal(self) -> str:
        return self._reveal()

    @property
    def masked(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"SecretKey({self.masked!r})"

    def __str__(self) -> str:
        return self.masked

    def __reduce__(self):
        # Pickling keeps only the mask (as a plain str), never the key.
        return (str, (self.masked,))

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretKey):
            return self.reveal() == other.reveal()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.masked)
