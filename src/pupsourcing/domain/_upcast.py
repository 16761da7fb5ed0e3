"""Upcasters: functions that turn an older payload version into the next one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pupsourcing.domain._errors import CodecError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Takes the decoded JSON object of version ``n`` and returns version ``n + 1``'s."""


class Upcasters:
    """The upcasters of one codec, by ``(event_type, from_version)``."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def add(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        if not isinstance(event_type, str) or not event_type:
            raise ValueError(f"event_type must be a non-empty str, got {event_type!r}")
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise ValueError(f"from_version must be an int >= 1, got {from_version!r}")
        if not callable(upcaster):
            raise TypeError(f"upcaster must be callable, got {type(upcaster).__name__}")
        if (event_type, from_version) in self._steps:
            raise ValueError(
                f"{event_type} v{from_version}: an upcaster to v{from_version + 1} "
                "is already registered"
            )
        self._steps[(event_type, from_version)] = upcaster

    def run(self, event_type: str, version: int, newest: int, data: object) -> tuple[int, object]:
        """Upcast ``data`` from ``version`` towards ``newest`` as far as the
        registered steps go; return the version reached and the data."""
        while version < newest:
            step = self._steps.get((event_type, version))
            if step is None:
                break
            if not isinstance(data, dict):
                raise CodecError(
                    f"the upcaster to v{version + 1} needs a JSON object, "
                    f"got {type(data).__name__}",
                    event_type=event_type,
                    event_version=version,
                )
            try:
                data = step(data)
            except Exception as exc:
                raise CodecError(
                    f"the upcaster to v{version + 1} failed: {exc!r}",
                    event_type=event_type,
                    event_version=version,
                ) from exc
            if not isinstance(data, dict):
                raise CodecError(
                    f"the upcaster to v{version + 1} returned {type(data).__name__}, not a dict",
                    event_type=event_type,
                    event_version=version,
                )
            version += 1
        return version, data
