"""The ``lcc`` command: ``lcc demo | study | reproduce | verify-data`` (what the Makefile calls).

Each subcommand is the module of the same job, its options passed through unchanged:
``lcc study --profile smoke --jobs 2`` is ``python -m lcc_utils.study --profile smoke --jobs 2``.
``lcc <command> --help`` lists a command's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand -> (module whose ``main(argv)`` runs it, arguments put first, one-line help).
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "demo": ("lcc_utils.demo", [], "every notebook once, small, on the real data (about 10 min; cache/demo/)"),
    "study": ("lcc_utils.study", [], "execute every notebook under a profile (smoke | quick | paper)"),
    "reproduce": ("lcc_utils.reproduce", [], "re-execute committed runs into a scratch root and compare metrics"),
    "verify-data": ("lcc_utils.data", ["--verify"], "re-hash every data file and check the cache's index"),
}


def parser() -> argparse.ArgumentParser:
    """The top-level parser (subcommands only; their options belong to their modules)."""
    ap = argparse.ArgumentParser(prog="lcc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run ``lcc COMMAND [OPTIONS]``; return the command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser().parse_args(argv)  # prints the usage (or the error naming the choices) and exits
        return 2
    module, first, _ = COMMANDS[argv[0]]
    return int(importlib.import_module(module).main([*first, *argv[1:]]) or 0)


if __name__ == "__main__":
    sys.exit(main())
