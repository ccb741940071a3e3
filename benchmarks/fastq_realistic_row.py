"""fastq's side of ``compare.py --scenario realistic``: one or more rows of ``fastq bench -s realistic``.

``fastq bench -s realistic -n K`` runs the first K rows of ``fastq.bench_realistic.ROWS``; compare.py
runs one row at a time, each system right after the other, so that a row's three figures come
from the same minute of a shared machine. This wrapper narrows ROWS to the rows asked for and
then runs the unchanged ``fastq bench`` command in this process (same code path, same JSON)::

    python benchmarks/fastq_realistic_row.py --broker redis://127.0.0.1:6379/5 --row 5 [--row 7]
"""

from __future__ import annotations

import argparse

from fastq import bench_realistic
from fastq.bench import bench_command


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", required=True, help="Redis URL (fastq bench keeps to its own key prefix).")
    p.add_argument("--row", type=int, action="append", required=True, help="Index into ROWS (repeatable).")
    args = p.parse_args()
    rows = bench_realistic.ROWS
    try:
        picked = [rows[i] for i in args.row]
    except IndexError:
        raise SystemExit(f"--row: choose from 0 to {len(rows) - 1}") from None
    # bench.py reads bench_realistic.ROWS when it runs: narrowing the list in place is enough.
    rows[:] = picked
    bench_command.main(["--broker", args.broker, "--scenario", "realistic", "--tasks", str(len(picked)),
                        "--json"], prog_name="fastq bench")


if __name__ == "__main__":
    main()
