"""The command line shared by the scripts that tabulate finished runs: `--run ...` or `--csv FILE`, and `--save`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pandas as pd


def table_from_args(description: str, load_runs: Callable[[list[str]], pd.DataFrame], argv=None) -> pd.DataFrame:
    """Parse ``--run ... | --csv FILE [--save FILE]``; the table of those runs (``load_runs``) or of the saved CSV."""
    ap = argparse.ArgumentParser(description=description)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", action="append", help="TangoFlow/<run id>; repeat for each seed")
    src.add_argument("--csv", help="a table saved with --save")
    ap.add_argument("--save", help="write the table as CSV here")
    args = ap.parse_args(argv)
    table = load_runs(args.run) if args.run else pd.read_csv(args.csv, keep_default_na=False)
    if args.save:
        table.to_csv(args.save, index=False)
    pd.set_option("display.width", 200)
    return table
