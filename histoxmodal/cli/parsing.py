"""What argparse does not do for the ``histoxmodal`` command line: walk the nested sub-command
parsers, and name an unknown option (with the closest spellings) under the usage of the
sub-command it was given to, not the top-level usage.

Standard library only, and no command module is imported here: imported on every start.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command parser below ``parser``, depth first, each once (aliases share one)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(subparsers(child))
    return found


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    """The action holding the sub-commands directly below ``parser``, if it has any."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subs[0] if subs else None


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands directly below ``parser``, by name."""
    action = _subcommands(parser)
    return dict(action.choices) if action else {}


def reject_unrecognized(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extras: Sequence[str]
) -> None:
    """Report unknown options with the usage of the (sub-)command they were given to and the
    closest option names, not the top-level usage; exits 2."""
    target = parser
    # down the chosen (nested) commands: `histoxmodal bench her2st` is in args.bench
    while (action := _subcommands(target)) is not None:
        value = getattr(args, action.dest, None)
        if value is None or value not in action.choices:
            break
        target = action.choices[value]
    _report_unknown(target, extras)


def _report_unknown(target: argparse.ArgumentParser, extras: Sequence[str]) -> None:
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


def reject_unknown_first(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Name an unknown ``--option`` before argparse complains about missing arguments:
    ``histoxmodal tile --bogus`` says ``--bogus`` is unknown (with close matches), not only
    that SLIDE and --out are missing; exits 2 if there is one."""
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
