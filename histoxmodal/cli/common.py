"""What every command of the ``histoxmodal`` command line shares: exit codes, argument types,
the plain-text table, and the options spelled the same way in several commands (``--src``,
``--data``) with their deprecated spellings.

Standard library only, and no command module is imported here: each ``cli/<command>.py``
imports this module, never another command (an import-linter contract in ``pyproject.toml``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned plain-text columns; the first row is the header, underlined."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (batch sizes, node counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (radii in µm; 0 switches the option off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _finite(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (pixel sizes in µm/px, lengths in µm)."""
    value = _finite(text, "a finite number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a fraction in [0, 1] (least tissue share of a tile)."""
    value = _finite(text, "a fraction in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def learning_rate(text: str) -> float:
    """An argparse type: a learning rate in (0, 1); 0 trains nothing, >= 1 diverges."""
    value = _finite(text, "a learning rate in (0, 1), e.g. 1e-4")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"must lie in (0, 1) (0 trains nothing, >= 1 diverges), e.g. 1e-4; got {text}"
        )
    return value


#: the largest seed every generator takes (numpy's legacy ``RandomState``: 32 bits)
MAX_SEED = 2**32 - 1


def random_seed(text: str) -> int:
    """An argparse type: a random seed, an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer seed in [0, {MAX_SEED}], got {text!r}"
        ) from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {value}")
    return value


#: the release that drops the deprecated spellings below
ALIASES_REMOVED_IN = "0.2"


def warn_deprecated(old: str, new: str) -> None:
    """One line on stderr: ``old`` still works this release; ``new`` is the spelling to use."""
    print(
        f"histoxmodal: warning: {old} is deprecated and goes in {ALIASES_REMOVED_IN}; use {new}",
        file=sys.stderr,
    )


class DeprecatedOption(argparse.Action):
    """An old option spelling: stores into the new option's destination and warns."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warn_deprecated(f"{parser.prog} {option_string}", self.new)
        setattr(namespace, self.dest, values)


def add_src(p: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    """``--src PATH`` (raw source data), with ``--data`` as its deprecated spelling."""
    p.add_argument("--src", metavar="PATH", default=None, help=help)
    p.add_argument(
        "--data", dest="src", action=DeprecatedOption, new="--src", help=argparse.SUPPRESS
    )
    if required:
        p.set_defaults(_requires=("src", "--src PATH"))


def add_data(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """``--data DIR`` (a paired dataset); the positional DATASET of before is deprecated."""
    p.add_argument(
        "--data", metavar="DIR", default=None,
        help="paired dataset (required): a folder written by histoxmodal build",
    )  # fmt: skip
    if positional:
        p.add_argument("dataset_positional", nargs="?", default=None, help=argparse.SUPPRESS)
    p.set_defaults(_requires=("data", "--data DIR"))


def check_aliases(args: argparse.Namespace) -> str | None:
    """Fold a deprecated positional DATASET into ``--data``; the error of a missing one."""
    where = f"histoxmodal {args.command}" + (
        f" {args.bench}" if getattr(args, "bench", None) else ""
    )
    pos = getattr(args, "dataset_positional", None)
    if pos is not None:
        if args.data is not None:
            return f"{where}: error: the dataset is given twice ({pos}, --data {args.data})"
        warn_deprecated(f"{where} DATASET (positional)", f"--data {pos}")
        args.data = pos
    required = getattr(args, "_requires", None)
    if required and getattr(args, required[0], None) is None:
        return f"{where}: error: {required[1]} is required"
    return None


def format_job_summary(results, *, unit: str = "tiles", rate: bool = False) -> str:
    """A plain-text table of a batch job's slides (``tile``, ``features``, ``predict``, the
    demo): name, status, count of ``unit``, µm/px and its source, time (and ``unit`` per second
    with ``rate``); then the counts, and the full reason of each slide failed, empty or busy."""
    rows = [("slide", "status", unit, "mpp (source)", "time") + ((f"{unit}/s",) if rate else ())]
    for r in results:
        mpp = f"{r.mpp:.4g} ({r.mpp_source})" if r.mpp else (r.mpp_source or "-")
        n = "-" if r.n_tiles is None else str(r.n_tiles)
        row = (r.name, r.status, n, mpp, f"{r.seconds:.1f}s")
        if rate:
            row += (f"{r.n_tiles / r.seconds:.1f}" if r.n_tiles and r.seconds > 0 else "-",)
        rows.append(row)
    lines = [format_table(rows)]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    total = sum(r.n_tiles or 0 for r in results)
    lines.append(
        f"{len(results)} slides: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + f"; {total} {unit}"
    )
    for r in results:
        if r.status in ("failed", "empty", "busy"):
            lines.append(f"{r.status}: {r.name}: {r.reason}")
    return "\n".join(lines)


#: the stain normalisation methods (histoxmodal.data.stain.STAIN_METHODS; not imported here:
#: this module stays standard library only)
STAIN_METHODS = ("macenko", "reinhard")


def add_stain_options(p, what: str) -> None:
    """``--stain-normalize METHOD`` and ``--stain-target PATH`` (build, features): normalise
    ``what`` to one reference's stain; tiles that cannot be (background, pen) stay raw."""
    p.add_argument(
        "--stain-normalize", choices=STAIN_METHODS, default=None, metavar="METHOD",
        help=f"normalise {what} to --stain-target's stain: macenko or reinhard (torchstain); "
        "background and pen tiles stay raw and are counted",
    )  # fmt: skip
    p.add_argument(
        "--stain-target", default=None, metavar="PATH",
        help="the stain reference: an H&E image (its tissue tiles), a folder of tiles, or a "
        "stain JSON (a run's stain.json)",
    )  # fmt: skip


def format_stain_summary(summary: dict | None, unit: str = "tiles") -> str | None:
    """One line: how many tiles (``unit``) were normalised and how many kept raw, by reason."""
    if not summary:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["fallback_reasons"].items()))
    return (
        f"stain ({summary['method']}): {summary['applied']} {unit} normalised, "
        f"{summary['fallback']} kept raw" + (f" ({reasons})" if reasons else "")
    )
