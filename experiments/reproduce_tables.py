"""Write the paper's Tables 2-5 beside ours, from evaluation result JSONs.

python experiments/reproduce_tables.py results/*.json --out experiments/results/tables.md
"""

import argparse
import sys
from pathlib import Path

from inception_jax.evaluation.tables import load_results, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="evaluation result JSON files")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: print)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        parser.error(f"no such result file(s): {', '.join(missing)}")
    markdown = render(load_results(args.results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown)
        print(f"wrote {args.out}")
    else:
        print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
