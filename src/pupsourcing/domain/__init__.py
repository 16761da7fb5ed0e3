"""The domain layer: aggregates, codecs and repositories.

>>> from pupsourcing.domain import Aggregate, JsonCodec, Repository

An :class:`Aggregate` records domain events (any objects its codec knows);
a :class:`Repository` saves them through a store, with optimistic
concurrency, and loads the aggregate back by applying its events in order,
optionally starting from a snapshot. :class:`JsonCodec` maps dataclasses
(and pydantic models, msgspec Structs) to compact JSON payloads, with
upcasters for older versions; the module ``eventmap-gen`` writes offers a
``CODEC`` too. The asyncio twin of :class:`Repository` is
:class:`pupsourcing.aio.AsyncRepository`.
"""

from pupsourcing.domain._aggregate import Aggregate
from pupsourcing.domain._codec import Codec, JsonCodec
from pupsourcing.domain._errors import AggregateNotFoundError, CodecError
from pupsourcing.domain._repository import Repository
from pupsourcing.domain._upcast import Upcaster

__all__ = [
    "Aggregate",
    "AggregateNotFoundError",
    "Codec",
    "CodecError",
    "JsonCodec",
    "Repository",
    "Upcaster",
]
