"""Entry point of the ``histoxmodal`` command.

Only argparse and the standard library are imported at start-up, so ``histoxmodal --help`` is
instant; each sub-command imports what it needs when it runs. Known errors (bad paths, bad
options, unreadable slides) print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence

from histoxmodal.cli import (
    bench,
    build,
    demo,
    embed,
    evaluate,
    export,
    features,
    fit_head,
    mil,
    models,
    predict,
    pretrain_genes,
    tile,
    train,
)
from histoxmodal.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, check_aliases
from histoxmodal.cli.examples import add_examples
from histoxmodal.version import __version__

#: the commands in the order ``histoxmodal --help`` lists them
COMMANDS = (
    tile,
    demo,
    build,
    export,
    train,
    predict,
    fit_head,
    mil,
    pretrain_genes,
    embed,
    evaluate,
    features,
    models,
    bench,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``histoxmodal`` argument parser (cheap: nothing heavy is imported)."""
    parser = argparse.ArgumentParser(
        prog="histoxmodal",
        description="Spatial transcriptomics and medical multimodal learning toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"histoxmodal {__version__}")
    _add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    add_examples(parser, "")
    for p in _subparsers(parser):
        _add_verbosity(p, top=False)
        add_examples(p, p.prog.removeprefix(parser.prog).strip())
    return parser


def _add_verbosity(p: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``-q`` on ``p``; a sub-command's own counts are added to the top-level ones."""
    prefix = "" if top else "sub_"
    default = 0 if top else argparse.SUPPRESS
    p.add_argument(
        "-v", "--verbose", action="count", default=default, dest=f"{prefix}verbose",
        help="more logging: -v info and library tips, -vv debug",
    )  # fmt: skip
    p.add_argument(
        "-q", "--quiet", action="count", default=default, dest=f"{prefix}quiet",
        help="less logging: -q errors only, -qq nothing but critical errors",
    )  # fmt: skip


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command parser below ``parser``, depth first, each once (aliases share one)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_subparsers(child))
    return found


def verbosity(args: argparse.Namespace) -> int:
    """The net ``-v`` count minus the ``-q`` count, wherever on the line they were given."""
    v = getattr(args, "verbose", 0) + getattr(args, "sub_verbose", 0)
    return v - getattr(args, "quiet", 0) - getattr(args, "sub_quiet", 0)


def log_level(verbosity: int) -> int:
    """Root logging level of a net verbosity: 0 WARNING, 1 INFO, 2+ DEBUG, -1 ERROR, -2 CRITICAL."""
    if verbosity >= 2:
        return logging.DEBUG
    return {1: logging.INFO, 0: logging.WARNING, -1: logging.ERROR}.get(verbosity, logging.CRITICAL)


def _setup_logging(verbosity: int) -> None:
    from histoxmodal.cli.logs import setup_logging

    setup_logging(verbosity, log_level(verbosity))


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands directly below ``parser``, by name."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extras) -> None:
    """Report unknown options with the usage of the (sub-)command they were given to and the
    closest option names, not the top-level usage."""
    target = parser
    for name in ("command", "bench", "mil"):
        value = getattr(args, name, None)
        choices = _commands(target)
        if value is None or value not in choices:
            break
        target = choices[value]
    _report_unknown(target, extras)


def _report_unknown(target: argparse.ArgumentParser, extras) -> None:
    import difflib

    options = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for e in extras:
        if e.startswith("-"):
            close = difflib.get_close_matches(e.split("=")[0], options, n=2, cutoff=0.75)
            if close:
                hints.append(f"{e}: did you mean {' or '.join(close)}?")
    target.error(
        f"unrecognized arguments: {' '.join(extras)}"
        + (f" ({'; '.join(hints)})" if hints else f"; see {target.prog} --help")
    )


def _unknown_first(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Name an unknown ``--option`` before argparse complains about missing arguments:
    ``histoxmodal tile --bogus`` says ``--bogus`` is unknown (with close matches), not only
    that SLIDE and --out are missing."""
    target, i = parser, 0
    while i < len(argv) and argv[i] in _commands(target):  # the (nested) command
        target, i = _commands(target)[argv[i]], i + 1
    if target is parser:
        return
    options = [o for a in target._actions for o in a.option_strings]
    unknown = []
    for token in argv[i:]:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name.startswith("--") and not any(o.startswith(name) for o in options):
            unknown.append(token)
    if unknown:
        _report_unknown(target, unknown)


def _printable_streams() -> None:
    """Never fail on a character the terminal's encoding lacks (µ under ``PYTHONIOENCODING=
    ascii``, or a C locale): it is printed escaped instead of ending the run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.errors or "strict") == "strict":
            with contextlib.suppress(ValueError, OSError):  # closed, or cannot change
                stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 some work failed, 2 bad usage).

    With ``-q`` only errors are printed: tables and metric dumps are dropped, and the lines
    naming a failed or busy item go to stderr.
    """
    stdout = sys.stdout
    try:
        return _main(argv)
    finally:
        sys.stdout = stdout


class _ErrorsOnly:
    """A stdout for ``-q``: passes only the lines that report a failed or busy item, to
    stderr."""

    def __init__(self, err) -> None:
        self.err, self.buf = err, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.startswith(("failed: ", "busy: ")):
                self.err.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.err.flush()


def _main(argv: Sequence[str] | None) -> int:
    _printable_streams()
    parser = build_parser()
    _unknown_first(parser, list(sys.argv[1:] if argv is None else argv))
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unrecognized(parser, args, extras)  # exits 2 with the command's usage
    _setup_logging(verbosity(args))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    usage_error = check_aliases(args)
    if usage_error:
        print(usage_error, file=sys.stderr)
        return EXIT_USAGE
    from histoxmodal.errors import HistoxmodalError

    if verbosity(args) < 0:
        sys.stdout = _ErrorsOnly(sys.stderr)  # type: ignore[assignment]
    try:
        return {c.NAME: c for c in COMMANDS}[args.command].run(args)
    except (HistoxmodalError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"histoxmodal: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # `histoxmodal models | head`: the reader left
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
            return EXIT_OK
        from histoxmodal.fileutil import DISK_ERRNOS

        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"histoxmodal: error: cannot write{where}: {exc.strerror or exc} "
            f"({DISK_ERRNOS[exc.errno]}); nothing partial is kept as finished output, rerun "
            "once there is room (or with a writable --out)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during tiling (SLURM preemption)
        signum = getattr(exc, "signum", 2)
        print(
            f"histoxmodal: interrupted ({signal.Signals(signum).name}); finished work is kept, "
            "rerun to resume",
            file=sys.stderr,
        )
        return 128 + signum


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
