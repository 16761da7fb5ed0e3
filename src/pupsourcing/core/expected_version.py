"""The expected-version argument of ``append``: optimistic concurrency control."""

from __future__ import annotations

from typing import Final, final

_ANY: Final = -1
_NO_STREAM: Final = -2

MAX_VERSION: Final = 2**63 - 1
"""The largest aggregate version: a BIGINT in every schema."""


@final
class ExpectedVersion:
    """What the caller believes the aggregate's version to be.

    ``ExpectedVersion.any()`` skips the check, ``no_stream()`` requires that
    the aggregate has no events yet, ``exact(n)`` requires version ``n``.
    ``exact(0)`` is ``no_stream()``, as in the Go library: equal, same hash,
    same answers to ``is_no_stream``/``is_exact``, same ``str``.
    """

    __slots__ = ("_value",)
    _value: int

    def __init__(self, _value: int) -> None:
        # Private: use the constructors below.
        object.__setattr__(self, "_value", _value)

    @classmethod
    def any(cls) -> ExpectedVersion:
        """No version check: append after whatever is there."""
        return cls(_ANY)

    @classmethod
    def no_stream(cls) -> ExpectedVersion:
        """The aggregate must not exist yet."""
        return cls(_NO_STREAM)

    @classmethod
    def exact(cls, version: int) -> ExpectedVersion:
        """The aggregate must be at exactly ``version``; ``exact(0)`` returns
        ``no_stream()`` (the aggregate must not exist)."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"exact version must be an int, got {type(version).__name__}")
        if version < 0:
            raise ValueError(f"exact version must be non-negative, got {version}")
        if version > MAX_VERSION:
            # No store holds it (aggregate_version is a BIGINT); drivers would
            # each fail differently.
            raise ValueError(f"exact version must be at most {MAX_VERSION}, got {version}")
        return cls(version or _NO_STREAM)

    @property
    def is_any(self) -> bool:
        return self._value == _ANY

    @property
    def is_no_stream(self) -> bool:
        return self._value == _NO_STREAM

    @property
    def is_exact(self) -> bool:
        """``exact(n)`` for ``n >= 1``; ``exact(0)`` is ``no_stream()``."""
        return self._value > 0

    @property
    def value(self) -> int:
        """The version for ``exact(n)``; 0 for ``any()`` and ``no_stream()``."""
        return max(self._value, 0)

    def matches(self, current: int) -> bool:
        """Whether an aggregate at version ``current`` (0: none) satisfies this."""
        if self._value == _ANY:
            return True
        return current == self.value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExpectedVersion):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((ExpectedVersion, self._value))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ExpectedVersion is immutable")

    def __reduce__(self) -> tuple[type[ExpectedVersion], tuple[int]]:
        # Copied and pickled through the constructor: the default sets the slot.
        return ExpectedVersion, (self._value,)

    def __str__(self) -> str:
        if self._value == _ANY:
            return "Any"
        if self._value == _NO_STREAM:
            return "NoStream"
        return f"Exact({self._value})"

    def __repr__(self) -> str:
        return f"ExpectedVersion.{self._constructor_call()}"

    def _constructor_call(self) -> str:
        if self._value == _ANY:
            return "any()"
        if self._value == _NO_STREAM:
            return "no_stream()"
        return f"exact({self._value})"
