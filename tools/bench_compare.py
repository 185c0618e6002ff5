#!/usr/bin/env python3
"""Put two or more benchmark reports (schema phive-bench/1) side by side.

Reads the JSON files that `phive bench --json` and `tools/bench_mistralrs.py --json` write,
prints one markdown table (a row per figure, a column per report) and writes a PNG bar chart
(one panel per figure) with matplotlib.

    /tmp/benchvenv2/bin/python tools/bench_compare.py phive.json mistralrs.json --png compare.png

A figure a report lacks (another concurrency level, an engine that cannot measure it) is `-`
in the table and left out of its panel.
"""

import argparse
import json
import sys

SCHEMA = "phive-bench/1"


def label(report, path):
    isq = report["model"].get("isq") or "no ISQ"
    return f"{report['engine']['name']} {report['engine']['version']} ({isq})"


def level(report, concurrency):
    return next((l for l in report["levels"] if l["concurrency"] == concurrency), None)


def rows(reports):
    """(name, unit-formatted getter, chart?) for every figure any report has."""
    out = [
        ("load s", lambda r: r["load"]["seconds"], "{:.2f}", True),
        ("peak RSS MB", lambda r: (r["load"].get("peak_rss_bytes") or 0) / 1e6 or None, "{:.0f}", True),
        ("first request TTFT s", lambda r: r["load"].get("first_request_ttft_s"), "{:.3f}", True),
    ]
    levels = sorted({l["concurrency"] for r in reports for l in r["levels"]})
    for c in levels:
        def fig(key, sub=None, c=c):
            def get(r):
                l = level(r, c)
                if l is None or l.get(key) is None:
                    return None
                return l[key][sub] if sub else l[key]
            return get
        out += [
            (f"c={c} TTFT p50 s", fig("ttft_s", "p50"), "{:.3f}", True),
            (f"c={c} prefill tok/s", fig("prefill_tok_s"), "{:.1f}", True),
            (f"c={c} decode tok/s per stream", fig("decode_tok_s_per_stream"), "{:.2f}", True),
            (f"c={c} decode tok/s aggregate", fig("decode_tok_s_aggregate"), "{:.2f}", c > 1),
            (f"c={c} ITL p50 ms", fig("itl_ms", "p50"), "{:.1f}", False),
            (f"c={c} prefill GFLOP/s", fig("prefill_gflop_s"), "{:.1f}", False),
            (f"c={c} prefill % of peak", fig("prefill_pct_of_peak"), "{:.0f}%", False),
            (f"c={c} decode GB/s", fig("decode_gb_s"), "{:.2f}", False),
            (f"c={c} decode % of peak", fig("decode_pct_of_peak"), "{:.0f}%", False),
        ]
    images = sorted({i["path"] for r in reports for i in r.get("images", [])})
    for path in images:
        def get(r, path=path):
            return next((i["ttft_s"] for i in r.get("images", []) if i["path"] == path), None)
        out.append((f"image TTFT s ({path.rsplit('/', 1)[-1]})", get, "{:.3f}", True))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="JSON reports (two or more)")
    ap.add_argument("--png", default="bench_compare.png", help="chart to write (default %(default)s)")
    a = ap.parse_args()
    if len(a.reports) < 2:
        sys.exit("give two or more reports")
    reports = []
    for path in a.reports:
        try:
            r = json.load(open(path))
        except (OSError, ValueError) as e:
            sys.exit(f"{path}: {e}")
        if r.get("schema") != SCHEMA:
            sys.exit(f"{path}: schema {r.get('schema')!r}, expected {SCHEMA!r}")
        reports.append(r)
    names = [label(r, p) for r, p in zip(reports, a.reports)]

    first = reports[0]
    w = first["workload"]
    print(f"machine: {first['machine']['model']} [{' '.join(first['machine']['flags'])}], "
          f"{first['machine']['threads']} threads; model {first['model']['source']}; "
          f"{w['prompt_tokens']} prompt tokens, {w['decode_tokens']} decode tokens\n")
    for r, p in zip(reports, a.reports):
        if r["workload"]["prompt_tokens"] != w["prompt_tokens"] or r["workload"]["decode_tokens"] != w["decode_tokens"]:
            print(f"warning: {p} ran a different workload: {r['workload']}", file=sys.stderr)
    table = rows(reports)
    print("| figure | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for name, get, fmt, _ in table:
        values = [get(r) for r in reports]
        if all(v is None for v in values):
            continue
        print(f"| {name} | " + " | ".join("-" if v is None else fmt.format(v) for v in values) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charted = [(n, g) for n, g, _, chart in table if chart and any(g(r) is not None for r in reports)]
    cols = min(3, len(charted))
    nrows = (len(charted) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, get) in zip(axes.flat, charted):
        values = [get(r) for r in reports]
        bars = ax.bar(range(len(names)), [v or 0 for v in values], color=colors[: len(names)])
        for b, v in zip(bars, values):
            if v is not None:
                ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
        lower = name.endswith(" s") or " s (" in name or "MB" in name or "ms" in name
        ax.set_title(f"{name} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.set_xticks([])
    for ax in list(axes.flat)[len(charted):]:
        ax.axis("off")
    fig.legend(bars, names, loc="lower center", ncol=len(names), fontsize=9)
    fig.suptitle(f"{first['model']['source']} on {first['machine']['model']} ({first['machine']['threads']} threads)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(a.png, dpi=110)
    print(f"\nwrote {a.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
