"""``python -m fastact``: print build_info() and run the self-check; exit 1 on a mismatch."""
import json
import sys

import fastact
from fastact import selfcheck


def main() -> int:
    print("fastact build info:")
    print(json.dumps(fastact.build_info(), indent=2))
    print("self-check (every op, forward and backward, against torch):")
    failures = selfcheck.run(verbose=True)
    if failures:
        print(f"self-check FAILED: {len(failures)} mismatches")
        return 1
    print("self-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
