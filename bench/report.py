"""Turn a pytest-benchmark JSON file into a markdown table: medians per group and the ratio of
every variant to a baseline variant measured in the same run.

    python bench/report.py .benchmarks/critic.json --baseline eager
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json_file")
    ap.add_argument("--baseline", default="eager", help="variant the ratios are taken against")
    args = ap.parse_args(argv)
    data = json.load(open(args.json_file))
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        m = re.search(r"\[(.*)\]", b["name"])
        params = b.get("params") or {}
        variant = params.get("variant") or params.get("name") or (m.group(1) if m else b["name"])
        groups[b["group"] or "all"][variant] = b
    mi = data.get("machine_info", {})
    print(f"machine: {mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}, "
          f"{mi.get('cpu', {}).get('count', '?')} logical CPUs; python {mi.get('python_version', '?')}; "
          f"run {data.get('datetime', '?')}")
    devices = sorted({str(b.get("extra_info", {}).get("device")) for b in data["benchmarks"]} - {"None"})
    print(f"device: {', '.join(devices) or '?'}\n")
    print(f"| group | variant | median (ms) | IQR (ms) | rounds | speed-up vs {args.baseline} |")
    print("|---|---|---:|---:|---:|---:|")
    for group in sorted(groups, key=lambda g: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", g)]):
        rows = groups[group]
        base = rows.get(args.baseline)
        for variant, b in sorted(rows.items(), key=lambda kv: kv[1]["stats"]["median"]):
            s = b["stats"]
            ratio = f"{base['stats']['median'] / s['median']:.2f}x" if base else "n/a"
            print(f"| {group} | {variant} | {s['median'] * 1e3:.3f} | {s['iqr'] * 1e3:.3f} | {s['rounds']} | {ratio} |")


if __name__ == "__main__":
    main()
