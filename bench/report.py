#!/usr/bin/env python3
"""Turns bench/run.sh's raw measurements into the Markdown table (stdout) and bench/results/latest.json."""

import argparse
import datetime
import json
import os
import statistics

# Row id prefix -> (benchmark, what is measured, baseline). Order here is the table's order.
ROWS = [
    ("insilo", "in-silo calls", "grain->grain ping-pong, 64 callers, 2 workers, calls/s",
     "raw Asio coroutines posting between 2 io_contexts"),
    ("activations", "activations", "activate trivial grains, activations/s", "none (bytes/activation reported)"),
    ("gateway-client", "gateway, C++ client", "silo::Client -> silod -> bench.Echo, calls/s",
     "raw gRPC bidi stream echo, same frames and batching"),
    ("gateway-unary", "gateway, plain gRPC", "unary /bench.Echo/Echo with silo-key, calls/s",
     "raw gRPC unary echo (async generic, 1 CQ per thread)"),
    ("cross-silo", "cross-silo", "2 silos, callers on one, grains on the other",
     "raw gRPC bidi stream echo between 2 processes"),
    ("durable", "durable writes", "benchpp.Durable/Add, postgres state, writes/s",
     "raw libpqxx upserts, batched (and unbatched)"),
    ("failover", "failover", "3 silos, kill -9 one: seconds until its grains answer", "none (Orleans ~15 s)"),
]


def si(x):
    if x is None:
        return "—"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def summary(values):
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def side_summary(runs):
    if not runs:
        return None
    out = {"runs": runs, "rate": summary([r["rate"] for r in runs])}
    if all("recovery_s" in r for r in runs):
        out["recovery_s"] = summary([r["recovery_s"] for r in runs])
    for key in ("p50_us", "p99_us", "cpu_us_per_op", "bytes_per_activation"):
        vals = [r[key] for r in runs if key in r]
        if vals:
            out[key] = statistics.median(vals)
    return out


def params_of(row_id):
    # gateway-client-64B-1 -> "64 B, 1 in flight"; durable-64 -> "64 writers"
    parts = row_id.split("-")
    fixed = {"insilo": "64 callers, 2 workers", "cross-silo": "64 Pinger->Ponger pairs, 2 silos",
             "failover": "3 silos, 200 grains on the killed one"}
    if row_id in fixed:
        return fixed[row_id]
    if row_id.startswith("gateway-"):
        return f"{parts[2].replace('B', ' B')}, {parts[3]} in flight"
    if row_id.startswith("durable-"):
        return f"{parts[1]} writer{'s' if parts[1] != '1' else ''}"
    return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--quick", type=int, default=0)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()

    rows = {}  # row id -> {"sides": {side: [runs]}, "cmds": {side: cmd}, "notes": [...], "failures": [...]}
    order = []
    with open(a.raw) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            kind, row_id = parts[0], parts[1]
            if row_id not in rows:
                rows[row_id] = {"sides": {}, "cmds": {}, "notes": [], "failures": []}
                order.append(row_id)
            r = rows[row_id]
            if kind == "result":
                side, cmd, payload = parts[2], parts[3], parts[4]
                r["cmds"][side] = cmd.strip()
                try:
                    r["sides"].setdefault(side, []).append(json.loads(payload))
                except ValueError:
                    r["failures"].append(f"{side} printed no result: {payload[:200]}")
            elif kind == "failed":
                r["failures"].append(f"{parts[2]} failed: {parts[4].strip()} ({parts[3].strip()})")
                r["cmds"][parts[2]] = parts[3].strip()
            elif kind == "note":
                r["notes"].append(parts[2])

    def sort_key(row_id):
        for i, (prefix, *_rest) in enumerate(ROWS):
            if row_id == prefix or row_id.startswith(prefix + "-"):
                return (i, order.index(row_id))
        return (len(ROWS), order.index(row_id))

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    result = {
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu},
        "commit": a.commit,
        "command": a.command,
        "quick": bool(a.quick),
        "repetitions": a.reps,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": [],
    }

    def cell(s):
        if not s:
            return "—"
        if "recovery_s" in s:
            rec = s["recovery_s"]
            if rec["n"] > 1:
                return f"{rec['median']:.2f} s ({rec['min']:.2f}–{rec['max']:.2f}, n={rec['n']})"
            return f"{rec['median']:.2f} s"
        rate = s["rate"]
        if a.reps > 1:
            return f"{si(rate['median'])}/s ({si(rate['min'])}–{si(rate['max'])})"
        return f"{si(rate['median'])}/s"

    def lat(s):
        if not s or "p50_us" not in s:
            return "—"
        return f"{s['p50_us']:.0f} / {s['p99_us']:.0f}"

    lines = [
        f"machine: {os.cpu_count()} CPUs, {cpu}; commit {a.commit}; command: `{a.command}`; "
        + ("quick run, 1 repetition" if a.quick else f"median of {a.reps} (min–max)"),
        "",
        "| benchmark | parameters | silo | baseline | silo/baseline | silo p50 / p99 µs | baseline p50 / p99 µs | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row_id in sorted(rows, key=sort_key):
        r = rows[row_id]
        meta = next((m for m in ROWS if row_id == m[0] or row_id.startswith(m[0] + "-")), (row_id, row_id, "", ""))
        silo = side_summary(r["sides"].get("silo", []))
        base = side_summary(r["sides"].get("baseline", []))
        base2 = side_summary(r["sides"].get("baseline2", []))
        ratio = None
        if silo and base and base["rate"]["median"] > 0:
            ratio = silo["rate"]["median"] / base["rate"]["median"]
        notes = list(r["notes"]) + r["failures"]
        for side, runs in r["sides"].items():
            bad = sum(x.get("failures", 0) for x in runs)
            if bad:
                notes.append(f"{side}: {bad} calls failed (not counted)")
            if any(x["ops"] == 0 for x in runs):
                r["failures"].append(f"{side}: a run completed no call")
        if silo and "bytes_per_activation" in silo:
            notes.append(f"{silo['bytes_per_activation']:.0f} bytes/activation (RSS)")
        if silo and "cpu_us_per_op" in silo:
            text = f"CPU/call: silo {silo['cpu_us_per_op']:.2f} µs"
            if base and "cpu_us_per_op" in base:
                text += f", baseline {base['cpu_us_per_op']:.2f} µs"
            notes.append(text)
        if base2:
            notes.append(f"unbatched libpqxx: {cell(base2)}, p50/p99 {lat(base2)} µs")
        status = "ok" if silo and not r["failures"] else ("failed" if r["failures"] else
                                                          ("pending" if any("pending" in n for n in r["notes"])
                                                           else "skipped"))
        result["rows"].append({
            "id": row_id, "benchmark": meta[1], "measures": meta[2], "baseline": meta[3],
            "parameters": params_of(row_id), "status": status, "silo": silo, "baseline_result": base,
            "baseline_unbatched": base2, "ratio": ratio, "notes": notes, "commands": r["cmds"],
        })
        ratio_text = f"{ratio:.2f}" if ratio is not None else "—"
        if status in ("pending", "skipped") and not silo:
            ratio_text = status
        lines.append(f"| {meta[1]} | {params_of(row_id)} | {cell(silo)} | {cell(base)} | {ratio_text} | "
                     f"{lat(silo)} | {lat(base)} | {'; '.join(notes)} |")

    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print("\n".join(lines))
    print(f"\nresults: {a.json}")


if __name__ == "__main__":
    main()
