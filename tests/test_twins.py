"""The blocking classes and their asyncio twins stay alike.

Each pair has the same public members with the same parameters (names,
kinds, defaults), the asyncio member is a coroutine function where the
blocking one is a plain function, and their docstrings are the same once the
known wording differences (:data:`DOC_WORDING`) are applied. Everything else
is a difference this module lists with its reason (:data:`ACCEPTED`); a new
one fails here until it is fixed or listed.

The runners are also compared at work: a failing projection, a
``BaseException`` from a handler and ``stop`` end both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, made_backend, require
from helpers import events
from pupsourcing import ExpectedVersion, PersistedEvent, ProjectionError
from pupsourcing.adapters.mysql import MySQLStore
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.aio import (
    AsyncClaimingRunner,
    AsyncMySQLStore,
    AsyncPostgresStore,
    AsyncProcessor,
    AsyncRepository,
    AsyncRunner,
    AsyncSQLiteStore,
)
from pupsourcing.domain import Repository
from pupsourcing.projection import ClaimingRunner, Processor, ProcessorConfig
from pupsourcing.runner import ProjectionRunner, Runner

TWINS = [
    (Processor, AsyncProcessor),
    (Runner, AsyncRunner),
    (PostgresStore, AsyncPostgresStore),
    (MySQLStore, AsyncMySQLStore),
    (SQLiteStore, AsyncSQLiteStore),
    (Repository, AsyncRepository),
    (ClaimingRunner, AsyncClaimingRunner),
]

DUNDERS = {"__init__": "__init__", "__enter__": "__aenter__", "__exit__": "__aexit__"}
"""The special methods compared, blocking name to asyncio name."""

ANNOTATIONS = {
    "threading.Event | None": "asyncio.Event | None",
    "SQLStore[Any]": "AsyncSQLStore[Any]",
    "Projection": "AsyncProjection",
    "Processor[ConnT]": "AsyncProcessor[ConnT]",
    "Callable[[], Any]": "Callable[[], Awaitable[Any]]",
    "Projection | Iterable[Projection]": "AsyncProjection | Iterable[AsyncProjection]",
}
"""Blocking annotation to the asyncio one it stands for (compared as text:
the modules use ``from __future__ import annotations``)."""

DOC_WORDING: list[tuple[str, str]] = []
"""Blocking wording to the asyncio wording in method docstrings, applied in
order before they are compared. Empty: the docstrings are identical, except
the paragraphs in :data:`ACCEPTED_DOCS`."""

ACCEPTED: dict[tuple[str, str], str] = {
    ("Processor", "connection"): (
        "a property in the blocking API, a coroutine method in the asyncio one: "
        "opening the connection from the factory may have to be awaited"
    ),
    ("Runner", "__init__"): (
        "only Runner takes poll_interval: it looks at a threading.Event from time "
        "to time, AsyncRunner awaits its asyncio.Event"
    ),
    ("PostgresStore", "decodes_rows"): (
        "says how the blocking store's _cursor decodes rows; the asyncio stores "
        "decode in _query and have no such switch"
    ),
    ("MySQLStore", "decodes_rows"): "as PostgresStore.decodes_rows",
    ("SQLiteStore", "decodes_rows"): "as PostgresStore.decodes_rows",
}
"""(blocking class, member) pairs that differ on purpose, with the reason."""

NOT_AWAITED: dict[tuple[str, str], str] = {
    ("ClaimingRunner", "held"): "reads what this process runs now: there is nothing to await",
}
"""(blocking class, method) pairs whose asyncio twin is a plain method too."""

ACCEPTED_DOCS: dict[tuple[str, str], tuple[str, str]] = {
    ("Runner", "run"): (
        "Interrupted (``KeyboardInterrupt`` in the calling thread)",
        "Cancelled (or a projection's task cancelled)",
    ),
}
"""Methods whose docstrings end differently: a thread is interrupted, a task
cancelled. The paragraphs starting with these texts are compared for being
there, the rest of the docstrings as usual."""

KEY_FACTS = {
    "Processor": [
        "global-position order",
        "exclusively",
        "zero-argument callable",
        "closes it on :meth:`close`",
        "bounded exponential",
        "exactly once",
        "never skips a committed event",
        "safe horizon",
        "leaves the checkpoint where the last committed batch put it",
    ],
    "Runner": ["concurrently", "until ``stop`` is set", "counterpart of"],
}
"""Facts both class docstrings of a pair state (whitespace normalised)."""


def ids(pair: tuple[type, type]) -> str:
    return pair[0].__name__


def public(cls: type, asyncio_side: bool) -> dict[str, str]:
    """Public member names of ``cls`` (and the special methods compared), by
    the name of their blocking twin."""
    names = {name: name for name in dir(cls) if not name.startswith("_")}
    for blocking_name, asyncio_name in DUNDERS.items():
        own = asyncio_name if asyncio_side else blocking_name
        if hasattr(cls, own):
            names[blocking_name] = own
    return names


def flat(text: str | None) -> str:
    return " ".join((text or "").split())


@pytest.mark.parametrize("pair", TWINS, ids=ids)
def test_same_members(pair: tuple[type, type]) -> None:
    blocking, asyncio_ = pair
    b_names, a_names = public(blocking, False), public(asyncio_, True)
    only = {n for n in b_names.keys() ^ a_names.keys() if (blocking.__name__, n) not in ACCEPTED}
    assert not only, f"members of only one of {blocking.__name__}, {asyncio_.__name__}: {only}"


def members(pair: tuple[type, type]) -> Iterator[tuple[str, Any, Any]]:
    """Each member both twins have and define apart (a member both inherit
    from the same base is shared, so alike by construction), except the
    accepted differences."""
    blocking, asyncio_ = pair
    b_names, a_names = public(blocking, False), public(asyncio_, True)
    for name in sorted(b_names.keys() & a_names.keys()):
        if (blocking.__name__, name) in ACCEPTED:
            continue
        b = inspect.getattr_static(blocking, b_names[name])
        a = inspect.getattr_static(asyncio_, a_names[name])
        if a is not b:
            yield name, b, a


@pytest.mark.parametrize("pair", TWINS, ids=ids)
def test_same_parameters(pair: tuple[type, type]) -> None:
    for name, b, a in members(pair):
        assert type(a) is type(b), f"{name}: {type(b).__name__} vs {type(a).__name__}"
        if not callable(b):
            continue
        b_sig, a_sig = inspect.signature(b), inspect.signature(a)
        b_params = [
            (p.name, p.kind, p.default, ANNOTATIONS.get(p.annotation, p.annotation))
            for p in b_sig.parameters.values()
        ]
        a_params = [(p.name, p.kind, p.default, p.annotation) for p in a_sig.parameters.values()]
        assert a_params == b_params, name
        b_return = ANNOTATIONS.get(b_sig.return_annotation, b_sig.return_annotation)
        assert a_sig.return_annotation == b_return, name


@pytest.mark.parametrize("pair", TWINS, ids=ids)
def test_asyncio_methods_are_coroutines(pair: tuple[type, type]) -> None:
    for name, b, a in members(pair):
        if name == "__init__" or not inspect.isfunction(b):
            continue
        if (pair[0].__name__, name) in NOT_AWAITED:
            assert not inspect.iscoroutinefunction(a), f"{name}: drop it from NOT_AWAITED"
            continue
        assert not inspect.iscoroutinefunction(b), name
        assert inspect.iscoroutinefunction(a), f"{pair[1].__name__}.{name} is not async"


def split_doc(doc: str, accepted: str | None) -> tuple[str, str]:
    """The docstring without the paragraph starting with ``accepted``, and that paragraph."""
    if accepted is None:
        return flat(doc), ""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    rest = [p for p in paragraphs if not p.startswith(accepted)]
    assert len(rest) == len(paragraphs) - 1, f"no paragraph starts with {accepted!r}"
    return flat("\n\n".join(rest)), accepted


@pytest.mark.parametrize("pair", TWINS, ids=ids)
def test_same_method_docstrings(pair: tuple[type, type]) -> None:
    for name, b, a in members(pair):
        b_doc, a_doc = inspect.getdoc(b), inspect.getdoc(a)
        if name.startswith("__"):
            assert flat(b_doc) == flat(a_doc), name  # documented on the class, if at all
            continue
        assert b_doc, f"{pair[0].__name__}.{name} needs a docstring"
        assert a_doc, f"{pair[1].__name__}.{name} needs a docstring"
        b_start, a_start = ACCEPTED_DOCS.get((pair[0].__name__, name), (None, None))
        b_text, _ = split_doc(b_doc, b_start)
        a_text, _ = split_doc(a_doc, a_start)
        for old, new in DOC_WORDING:
            b_text = b_text.replace(old, new)
        assert a_text == b_text, name


@pytest.mark.parametrize("pair", TWINS, ids=ids)
def test_class_docstrings_name_each_other_and_state_the_same_facts(
    pair: tuple[type, type],
) -> None:
    blocking, asyncio_ = pair
    b_doc, a_doc = flat(blocking.__doc__), flat(asyncio_.__doc__)
    assert b_doc
    assert a_doc
    assert blocking.__name__ in a_doc
    assert asyncio_.__name__ in b_doc
    for fact in KEY_FACTS.get(blocking.__name__, []):
        assert fact in b_doc, f"{blocking.__name__}: {fact!r}"
        assert fact in a_doc, f"{asyncio_.__name__}: {fact!r}"


def test_accepted_differences_still_exist() -> None:
    """A difference listed as accepted that was since removed is taken off the list."""
    classes = {b.__name__: (b, a) for b, a in TWINS}
    for cls_name, name in ACCEPTED:
        blocking, asyncio_ = classes[cls_name]
        b_names, a_names = public(blocking, False), public(asyncio_, True)
        assert name in b_names or name in a_names, f"{cls_name}.{name} is gone: drop it"
        if (name in b_names) != (name in a_names):
            continue  # still a member of only one twin
        b = inspect.getattr_static(blocking, b_names[name])
        a = inspect.getattr_static(asyncio_, a_names[name])
        alike = type(a) is type(b) and (
            not callable(b) or str(inspect.signature(a)) == str(inspect.signature(b))
        )
        assert not alike, f"{cls_name}.{name} no longer differs: drop it from ACCEPTED"


# -- the runners at work -------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL: the projections' batches overlap, which SQLite's single
    writer does not allow."""
    require("psycopg")
    with made_backend("postgres", tmp_path) as b:
        yield b


class Halting(Exception):
    """A handler failure."""


FAILURES = {
    "exception": (Halting, ProjectionError),
    "base-exception": (SystemExit, SystemExit),
    "stop": (None, None),
}
"""How the failing projection ends: what its handler raises, what the runner raises."""


def run_blocking(db: Backend, raised: type[BaseException] | None) -> Any:
    """Run a projection that fails while a slow one is mid-batch; return
    what the runner raised (``None`` if it returned)."""
    entered, release, stop = threading.Event(), threading.Event(), threading.Event()

    class Slow:
        name = "slow"

        def handle(self, event: PersistedEvent, tx: Any) -> None:
            entered.set()
            assert release.wait(10)

    class Failing:
        name = "failing"

        def handle(self, event: PersistedEvent, tx: Any) -> None:
            assert entered.wait(10)
            release.set()
            if raised is None:
                stop.set()
            else:
                raise raised("halt")

    config = ProcessorConfig(batch_size=2, poll_interval=0.01)
    with (
        Processor(db.connect, db.store, config) as slow,
        Processor(db.connect, db.store, config) as failing,
    ):
        try:
            Runner().run(
                [ProjectionRunner(Slow(), slow), ProjectionRunner(Failing(), failing)], stop=stop
            )
        except BaseException as exc:  # SystemExit included: what the runner raised
            return exc
        finally:
            assert not [t for t in threading.enumerate() if t.name.startswith("pupsourcing-")]
    return None


def run_asyncio(db: Backend, raised: type[BaseException] | None) -> Any:
    """:func:`run_blocking` on :class:`AsyncRunner`."""

    async def scenario() -> Any:
        entered, release, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

        class Slow:
            name = "slow"

            async def handle(self, event: PersistedEvent, tx: Any) -> None:
                entered.set()
                await asyncio.wait_for(release.wait(), 10)

        class Failing:
            name = "failing"

            async def handle(self, event: PersistedEvent, tx: Any) -> None:
                await asyncio.wait_for(entered.wait(), 10)
                release.set()
                if raised is None:
                    stop.set()
                else:
                    raise raised("halt")

        config = ProcessorConfig(batch_size=2, poll_interval=0.01)
        store = db.async_store()
        async with (
            AsyncProcessor(db.open_async, store, config) as slow,
            AsyncProcessor(db.open_async, store, config) as failing,
        ):
            try:
                await AsyncRunner().run(
                    [ProjectionRunner(Slow(), slow), ProjectionRunner(Failing(), failing)],
                    stop=stop,
                )
            except BaseException as exc:  # SystemExit included: what the runner raised
                return exc
            finally:
                tasks = [t.get_name() for t in asyncio.all_tasks()]
                assert not [name for name in tasks if name.startswith("pupsourcing-")]
        return None

    outcome = None
    with contextlib.suppress(SystemExit):  # before the fix, it left the event loop
        outcome = asyncio.run(scenario())
    return outcome


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_runners_end_alike(db: Backend, api: str, failure: str) -> None:
    """The projection that fails (or sets ``stop``) ends the run; the other one
    first commits the batch it is in, then the runner raises the failure."""
    raised, expected = FAILURES[failure]
    conn = db.connection()
    positions = db.store.append(conn, ExpectedVersion.any(), events(4, "a")).global_positions
    conn.commit()
    outcome = (run_blocking if api == "blocking" else run_asyncio)(db, raised)
    if expected is None:
        assert outcome is None
    else:
        assert isinstance(outcome, expected), outcome
        if expected is ProjectionError:
            assert isinstance(outcome.__cause__, Halting)
    # The slow projection committed the batch it was in (and may have run
    # the next before it saw the others stop); the failing one's was rolled back.
    checkpoints = db.checkpoints()
    assert checkpoints.get("slow") in (positions[1], positions[3])
    if raised is None:
        assert checkpoints.get("failing") in (positions[1], positions[3])
    else:
        assert checkpoints.get("failing", 0) == 0
