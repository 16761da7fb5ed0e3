"""The :class:`Aggregate` base class."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID


def check_aggregate_class(cls: object) -> None:
    """Raise ``TypeError`` unless ``cls`` is an :class:`Aggregate` subclass with
    its ``bounded_context`` and ``aggregate_type`` (and a valid ``snapshot_schema``)."""
    if not isinstance(cls, type) or not issubclass(cls, Aggregate):
        raise TypeError(f"aggregate_class must be an Aggregate subclass, got {cls!r}")
    for attribute in ("bounded_context", "aggregate_type"):
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"{cls.__qualname__}.{attribute}: an Aggregate subclass needs the class "
                f"attribute {attribute} (a non-empty str), got {value!r}"
            )
    schema = getattr(cls, "snapshot_schema", None)
    if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema < 2**31:
        raise TypeError(
            f"{cls.__qualname__}.snapshot_schema: must be an int from 1 to {2**31 - 1}, "
            f"got {schema!r}"
        )


class Aggregate:
    """A consistency boundary whose state is the fold of its events.

    Subclasses set the class attributes ``bounded_context`` and
    ``aggregate_type``, override :meth:`apply`, and write commands that check
    their rules and then :meth:`record` events. A
    :class:`~pupsourcing.domain.Repository` saves the recorded events and
    loads the aggregate back by applying its stored events in order.
    """

    bounded_context: ClassVar[str]
    aggregate_type: ClassVar[str]
    snapshot_schema: ClassVar[int] = 1
    """The layout version of :meth:`snapshot_state`; bump it when the state's
    shape changes, and older snapshots are ignored."""

    def __init__(self, aggregate_id: str) -> None:
        check_aggregate_class(type(self))
        if not isinstance(aggregate_id, str) or not aggregate_id:
            raise ValueError(f"aggregate_id must be a non-empty str, got {aggregate_id!r}")
        self._id = aggregate_id
        self._version = 0
        self._pending: list[object] = []
        # The id of the event this object's last save appended (at version
        # - len(pending)): the next save checks it is still stored there.
        self._saved_id: UUID | None = None

    @property
    def id(self) -> str:
        """The aggregate's id (``aggregate_id`` in the store)."""
        return self._id

    @property
    def version(self) -> int:
        """How many events have been applied, pending ones included."""
        return self._version

    @property
    def pending_events(self) -> tuple[object, ...]:
        """The events recorded and not yet saved, in order."""
        return tuple(self._pending)

    def apply(self, event: object) -> None:
        """Fold one event into the state. Override it; it must not fail for
        an event that was stored (loading calls it for every stored event)."""
        raise NotImplementedError(
            f"{type(self).__qualname__}.apply() must handle {type(event).__qualname__}"
        )

    def record(self, event: object) -> None:
        """:meth:`apply` ``event``, then queue it for saving. Nothing is queued
        when ``apply`` raises."""
        self.apply(event)
        self._version += 1
        self._pending.append(event)

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot stores: by default the instance's public
        attributes (those not starting with ``_``)."""
        return {name: value for name, value in vars(self).items() if not name.startswith("_")}

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        """Set the state from :meth:`snapshot_state`'s dict; by default sets
        each entry as an attribute. Called on a new instance, it refuses
        (``ValueError``) a state without a key that instance's
        :meth:`snapshot_state` has: a snapshot from before that attribute
        existed would leave it at its initial value. Keys the new instance
        lacks are set (``apply`` may add attributes)."""
        missing = sorted(set(self.snapshot_state()) - set(state))
        if missing:
            raise ValueError(
                f"the snapshot has no {', '.join(map(repr, missing))} (older than the "
                f"class: bump {type(self).__qualname__}.snapshot_schema when the state changes)"
            )
        for name, value in state.items():
            setattr(self, name, value)

    def _replay(self, event: object, version: int) -> None:
        self.apply(event)
        self._version = version

    def _saved(self, last_event_id: UUID) -> None:
        self._pending.clear()
        self._saved_id = last_event_id

    def __repr__(self) -> str:
        pending = f", {len(self._pending)} pending" if self._pending else ""
        return f"<{type(self).__qualname__} {self._id!r} v{self._version}{pending}>"
