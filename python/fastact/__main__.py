"""``python -m fastact``: print build_info() and run the self-check; exit 1 on a mismatch.

``--seed N`` draws other inputs (the default is fixed, so the check is
deterministic); ``--quick`` runs the same comparisons at smaller sizes."""
import argparse
import json
import sys

import fastact
from fastact import selfcheck


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastact", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=selfcheck.DEFAULT_SEED, help="seed of the self-check's inputs")
    ap.add_argument("--quick", action="store_true", help="the same comparisons at smaller sizes")
    args = ap.parse_args(argv)
    print("fastact build info:")
    print(json.dumps(fastact.build_info(), indent=2))
    print("self-check (every op, forward and backward, against torch):")
    failures = selfcheck.run(verbose=True, seed=args.seed, quick=args.quick)
    if failures:
        print(f"self-check FAILED: {len(failures)} mismatches")
        return 1
    print("self-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
