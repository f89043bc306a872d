"""Plots weft-bench's results: added latency (p50, p99, p999) per contender
at each fixed rate, one panel per protocol and rate."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.load(open(sys.argv[1]))
rows = [r for r in results["rows"] if r["contender"] != "direct"]
points = sorted({(r["protocol"], r["rate"]) for r in rows})
fig, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 4), squeeze=False)
for ax, (protocol, rate) in zip(axes[0], points):
    here = [r for r in rows if (r["protocol"], r["rate"]) == (protocol, rate)]
    names = [r["contender"] for r in here]
    width = 0.27
    for i, q in enumerate(["added_p50_ms", "added_p99_ms", "added_p999_ms"]):
        xs = [j + (i - 1) * width for j in range(len(here))]
        ax.bar(xs, [max(r[q] or 0, 0) for r in here], width, label=q.split("_")[1])
    ax.set_xticks(range(len(here)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_title(f"{protocol} @ {rate} req/s")
    ax.set_ylabel("added latency (ms)")
    ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
print(f"plot: {sys.argv[2]}")
