"""User errors: bad config, data, workdir or checkpoint. The CLIs print them as one line and exit 2.

Anything else (a bug) keeps its traceback. `BITJAX_TRACEBACK=1` shows the traceback of a user error too.
"""

from __future__ import annotations

import contextlib
import os
import sys

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """Something the user can fix (the message says what); a ValueError, so callers may catch either."""


@contextlib.contextmanager
def as_user_errors():
    """Turns a ValueError raised inside into a UserError: for code that only checks user input."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from e


def one_line(message) -> str:
    """Messages with newlines (e.g. ml_collections' "did you mean" hints) collapsed onto one line."""
    return " ".join(str(message).split())


def report(e: BaseException, code: int = EXIT_USER_ERROR):
    """Prints `error: <message>` on stderr and exits with `code` (re-raises with BITJAX_TRACEBACK=1)."""
    if os.environ.get("BITJAX_TRACEBACK"):
        raise e
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str() is a repr
    print(f"error: {one_line(msg)}", file=sys.stderr, flush=True)
    sys.exit(code)


def cli(fn):
    """Decorates a CLI `main`: UserError → one line + exit 2; a non-finite stop → one line + exit 1;
    a forced interrupt → exit 130."""

    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            report(e)
        except FloatingPointError as e:  # the run diverged: an outcome, not a bug in the code
            report(e, code=1)
        except KeyboardInterrupt:  # a second Ctrl-C (the first one checkpoints and exits 0)
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped
