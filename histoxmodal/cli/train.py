"""``histoxmodal train``."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import EXIT_OK, positive_int

NAME = "train"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal train`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="contrastive training of image and gene towers",
        description="Train from a YAML config or a bundled example (--list). Writes OUT with "
        "config.json, genes.txt, csv/metrics.csv, tensorboard/, checkpoints/ and "
        "model.safetensors; --resume continues an interrupted or finished run.",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML file or example name")
    p.add_argument("--list", action="store_true", help="list the bundled example configs")
    p.add_argument("--data", metavar="DIR", help="paired dataset (histoxmodal build)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder")
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        metavar="N",
        help="epochs to train, >= 1 (default: the config's optim.max_epochs)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--print-config", nargs="?", const="yaml", choices=("yaml", "json"), default=None,
        metavar="yaml|json",
        help="print the resolved config (CONFIG + --set, --data, --max-epochs) and exit",
    )  # fmt: skip
    p.add_argument(
        "--split",
        default=None,
        metavar="FILE",
        help="split file choosing the training rows (default: the dataset's random)",
    )
    p.add_argument(
        "--fold",
        default="0",
        metavar="K|NAME",
        help="fold index or name, e.g. sample=C5 (default 0)",
    )
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (Lightning)")
    p.add_argument("--devices", default="auto", help="devices per node (Lightning)")
    p.add_argument(
        "--num-nodes", type=positive_int, default=1, help="nodes (Lightning; SLURM detected)"
    )


def config_description(path: Path) -> str:
    """The prose of a config's leading ``# `` comment, as one paragraph (example command lines,
    indented further in the comment, are left out)."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.startswith("   ") or not text.strip():  # an example command, or a blank
            continue
        words.append(text.strip())
    return " ".join(words)


def format_config_list(configs: dict[str, Path], width: int | None = None) -> str:
    """Name and whole description of each config, wrapped to ``width`` (the terminal's, at
    most 100) under a hanging indent, never cut."""
    import shutil
    import textwrap

    width = width or min(shutil.get_terminal_size((100, 24)).columns, 100)
    pad = max([len(n) for n in configs] + [12]) + 2
    blocks = []
    for name, path in configs.items():
        blocks.append(
            textwrap.fill(
                config_description(path) or "-",
                width=max(width, pad + 20),
                initial_indent=f"{name:<{pad}}",
                subsequent_indent=" " * pad,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    return "\n".join(blocks)


def format_config(cfg, args: argparse.Namespace) -> str:
    """The config a ``train`` command line would run, as YAML or JSON (``--print-config``).

    ``--set`` is already applied by the loader; ``--data`` and ``--max-epochs`` are folded in
    here, so the output, saved as a file, trains the same run.
    """
    import json

    data = json.loads(json.dumps(cfg.to_dict(), default=str))  # tuples -> lists, paths -> str
    if args.data is not None:
        data["data"] = args.data
    if args.max_epochs is not None:
        data["optim"]["max_epochs"] = args.max_epochs
    if args.print_config == "json":
        return json.dumps(data, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def run(args: argparse.Namespace) -> int:
    """``histoxmodal train``: list or print configs, or check everything and train."""
    from histoxmodal.deps import require_extra
    from histoxmodal.errors import ConfigError
    from histoxmodal.progress import progress_enabled

    require_extra("torch", "histoxmodal train")
    from histoxmodal.workflows.config_files import bundled_configs, load_config

    if args.list:
        print(format_config_list(bundled_configs()))
        return EXIT_OK
    if getattr(args, "print_config", None):
        if not args.config:
            raise ConfigError("--print-config needs CONFIG (a YAML file or an example of --list)")
        print(format_config(load_config(args.config, args.set), args), end="")
        return EXIT_OK
    if not args.config or not args.out:
        raise ConfigError("histoxmodal train needs CONFIG and --out (see --list for examples)")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise ConfigError(f"--max-epochs must be >= 1 (got {args.max_epochs})")
    from histoxmodal.workflows.train import check_devices, train

    try:
        devices = check_devices(args.devices, accelerator=args.accelerator)
    except ConfigError as exc:
        raise ConfigError(f"--{exc}") from exc
    cfg = load_config(args.config, args.set)
    train(
        cfg,
        args.out,
        data=args.data,
        split=args.split,
        fold=args.fold,
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        resume=args.resume,
        enable_progress_bar=progress_enabled(),
    )
    print(f"run written to {Path(args.out).resolve()}")
    return EXIT_OK
