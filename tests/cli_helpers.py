"""Running the ``pupsourcing`` command: in this process (:func:`cli`), or as
the real ``python -m pupsourcing`` in a subprocess (:func:`cli_process`).

Starting a Python process and importing pupsourcing and a database driver
costs a few tenths of a second, more than most commands take; so tests that
only look at a command's output, exit status and effects call
:func:`pupsourcing.cli.main` in this process, as ``python -m pupsourcing``
would (stdout, stderr and stdin swapped for strings, the environment and
the current directory as given, an uncaught exception printed as a
traceback and exit status 1), and everything the command may change in the
process put back afterwards. Tests of signals, of child processes, of a
terminal, or of the entry point itself start the real command.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pupsourcing

_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGALRM]
_LIBRARY = (
    os.path.dirname(pupsourcing.__file__),
    os.path.dirname(os.__file__),  # the standard library
    *{p for p in sys.path if p.endswith("-packages")},
)
"""Where modules that stay imported after an in-process command come from:
pupsourcing itself, the standard library and installed packages (a fresh
process would import them again, unchanged). Any other module the command
imported (a projection module of the test's) is forgotten again."""


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without a stray $PUPSOURCING_DB, with this
    checkout (and tests/, for the projection modules) importable."""
    env = {k: v for k, v in os.environ.items() if k != "PUPSOURCING_DB"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.update(extra)
    return env


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pupsourcing", *args]


def cli_process(
    *args: str,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The real command, ``python -m pupsourcing ARGS``, in a subprocess."""
    return subprocess.run(
        cli_argv(*args),
        capture_output=True,
        text=True,
        input=input if input is not None else "",
        cwd=cwd,
        timeout=timeout,
        env=cli_env(**env),
    )


class _TimedOut(BaseException):
    """Raised into a command that ran past its timeout (not an ``Exception``:
    the command must not report it as its own error)."""


def _time_out(signum: int, frame: Any) -> None:
    raise _TimedOut


class _Pipe(io.StringIO):
    """A stream as a subprocess's pipe looks to the command: no terminal."""

    encoding = "utf-8"

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _as_a_process(env: dict[str, str], cwd: Path | None, stdin: io.StringIO) -> Iterator[None]:
    """Run the body as a fresh process would see it, and put back everything
    a command may change: the environment, the current directory, the
    standard streams, the import path and modules, the ``pupsourcing``
    loggers, the root logger (``--log-format json`` adds its handler when
    there is none), whether warnings are logged, and the signal handlers."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    loggers = [logging.getLogger(n) for n in ("pupsourcing", "pupsourcing.cli", "")]
    saved_loggers = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    warnings_logged = getattr(logging, "_warnings_showwarning", None) is not None
    saved_signals = {s: signal.getsignal(s) for s in _SIGNALS}
    os.environ.clear()
    os.environ.update(env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin = stdin
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            origin = getattr(sys.modules[name], "__file__", None)
            if origin and not origin.startswith(_LIBRARY):
                del sys.modules[name]
        for lg, (handlers, propagate, level) in zip(loggers, saved_loggers, strict=True):
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.setLevel(level)
        logging.captureWarnings(warnings_logged)
        for signum, handler in saved_signals.items():
            if handler is not None:
                signal.signal(signum, handler)


def cli(
    *args: str,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """``pupsourcing ARGS`` run in this process (see the module's doc), with
    the result a subprocess would give: exit status, stdout and stderr.
    ``env`` adds to the test's environment (without ``$PUPSOURCING_DB``);
    ``input`` is stdin (empty by default). A command still running after
    ``timeout`` seconds is interrupted: ``subprocess.TimeoutExpired``."""
    from pupsourcing.cli import main

    starting = [name for name in env if name.startswith("PYTHON")]
    if starting:  # only a new interpreter reads them
        raise ValueError(f"{starting} take effect in a new process: use cli_process")
    out, err = _Pipe(), _Pipe()
    environment = {k: v for k, v in cli_env(**env).items() if k != "PYTHONPATH"}
    with _as_a_process(environment, cwd, _Pipe(input or "")):
        sys.stdout, sys.stderr = out, err
        signal.signal(signal.SIGALRM, _time_out)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            code: Any = main(list(args))
        except _TimedOut:
            raise subprocess.TimeoutExpired(
                ["pupsourcing", *args], timeout, out.getvalue(), err.getvalue()
            ) from None
        except SystemExit as exc:  # argparse's usage errors, --help, --version
            code = exc.code
        except BaseException:  # as the interpreter reports an uncaught exception
            traceback.print_exc(file=err)
            code = 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=err)
            code = 1
    return subprocess.CompletedProcess(["pupsourcing", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """A failure reported as one line on stderr, no traceback; returns the line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = lines[0]
    assert line.startswith("pupsourcing "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def execute(conn: Any, sql: str) -> None:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
