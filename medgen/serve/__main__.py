"""``python -m medgen.serve [flags]`` and ``python -m medgen.serve create-key NAME``: the same as ``medgen serve``."""

from __future__ import annotations

import argparse
import logging
import sys

from medgen.serve.commands import add_serve_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medgen serve", description="the medgen REST API, worker and web page")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        return run_from_args(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"medgen serve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
