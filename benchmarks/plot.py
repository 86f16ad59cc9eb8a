"""PNG plots of a results.json: forward+backward time per op and
implementation, and the fraction of the copy bandwidth each reaches."""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict


def plot(results_json: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results_json) as f:
        data = json.load(f)
    ctx, rows = data["context"], data["rows"]
    out_dir = os.path.dirname(results_json)
    written = []
    for metric, label, fname in (("ms", "forward+backward time (ms, lower is better)", "time.png"),
                                 ("pct_copy", "forward+backward, % of copy bandwidth (higher is better)",
                                  "bandwidth.png")):
        groups = defaultdict(dict)  # (op, dtype, shape) -> impl -> value
        for r in rows:
            if r["case"] == "fwd+bwd":
                groups[(r["op"], r["dtype"], r["shape"])][r["impl"]] = r[metric]
        if not groups:
            continue
        impls = sorted({i for g in groups.values() for i in g}, key=lambda i: (i != "fastact", i))
        keys = list(groups)
        fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(keys) * len(impls)), 5))
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            xs = [k + j * width for k in range(len(keys))]
            ax.bar(xs, [groups[key].get(impl, 0) for key in keys], width, label=impl)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))])
        ax.set_xticklabels([f"{op}\n{dt} {shape}" for op, dt, shape in keys], rotation=60, ha="right",
                           fontsize=7)
        ax.set_ylabel(label)
        if metric == "ms":  # ops range from milliseconds to seconds
            ax.set_yscale("log")
        ax.set_title(f"{ctx['device_name']} · torch {ctx['torch']} · fastact @ {ctx['commit']}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in plot(sys.argv[1]):
        print(path)
