"""Entry point of ``histoxmodal``: the table of commands, and the known errors mapped to one
line and an exit code. Each command is a module ``cli/<command>.py`` with ``add_parser`` and
``run(args)``; only argparse and the standard library load at start-up (``--help`` is instant).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
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
from histoxmodal.cli.logs import (
    ErrorsOnly,
    add_verbosity,
    log_level,
    printable_streams,
    setup_logging,
    verbosity,
)
from histoxmodal.cli.parsing import reject_unknown_first, reject_unrecognized, subparsers
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
    add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    add_examples(parser, "")
    for p in subparsers(parser):
        add_verbosity(p, top=False)
        add_examples(p, p.prog.removeprefix(parser.prog).strip())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 some work failed, 2 bad usage)."""
    printable_streams()
    parser = build_parser()
    reject_unknown_first(parser, list(sys.argv[1:] if argv is None else argv))
    args, extras = parser.parse_known_args(argv)
    if extras:
        reject_unrecognized(parser, args, extras)  # exits 2 with the command's usage
    setup_logging(verbosity(args), log_level(verbosity(args)))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    usage_error = check_aliases(args)
    if usage_error:
        print(usage_error, file=sys.stderr)
        return EXIT_USAGE
    return _run({c.NAME: c for c in COMMANDS}[args.command], args)


def _run(command, args: argparse.Namespace) -> int:
    """``command.run(args)``; a known error is one line on stderr and an exit code: 2 bad
    options, names or paths; 1 bad input data (``DataError``) or a full or read-only disk; 0 a
    closed pipe; 128 + N signal N. ``-q`` prints only failed or busy items, on stderr."""
    from histoxmodal.errors import DataError, HistoxmodalError

    stdout = sys.stdout
    if verbosity(args) < 0:
        sys.stdout = ErrorsOnly(sys.stderr)  # type: ignore[assignment]
    try:
        return command.run(args)
    except DataError as exc:  # the input is at fault, not the options
        print(f"histoxmodal: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
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
    finally:
        sys.stdout = stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
