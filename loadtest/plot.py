"""Plot a locust run's history: users, answers and failures per second, latency.

    python -m loadtest.plot loadtest/reports/ramp [--out loadtest/reports/ramp.png]

Reads ``<prefix>_stats_history.csv`` (locust writes it with ``--csv <prefix>``), the
"Aggregated" rows, one every few seconds.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_history(prefix: Path) -> dict[str, list[float]]:
    """Seconds since the start, users, requests/s, failures/s, p50 and p95 (ms)."""
    columns = {"users": "User Count", "rps": "Requests/s", "fps": "Failures/s",
               "p50": "50%", "p95": "95%"}  # fmt: skip
    series: dict[str, list[float]] = {"t": [], **{key: [] for key in columns}}
    with open(f"{prefix}_stats_history.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    if not rows:
        raise SystemExit(f"{prefix}_stats_history.csv has no Aggregated rows")
    start = int(rows[0]["Timestamp"])
    for row in rows:
        series["t"].append(int(row["Timestamp"]) - start)
        for key, column in columns.items():
            value = row[column]
            series[key].append(float("nan") if value in ("", "N/A") else float(value))
    return series


def plot(series: dict[str, list[float]], out: Path, title: str) -> Path:
    figure, (load, latency) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    load.plot(series["t"], series["rps"], label="answers/s (all)", color="tab:blue")
    load.plot(series["t"], series["fps"], label="failures/s (503s included)", color="tab:red")
    load.set_ylabel("per second")
    users = load.twinx()
    users.plot(series["t"], series["users"], "--", color="gray", label="users")
    users.set_ylabel("users")
    handles = load.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    load.legend(handles=handles, fontsize=8, loc="upper left")
    load.set_title(title, fontsize=10)
    load.grid(alpha=0.3)
    latency.plot(series["t"], series["p50"], label="p50")
    latency.plot(series["t"], series["p95"], label="p95")
    latency.set_ylabel("latency, ms")
    latency.set_xlabel("seconds")
    latency.legend(fontsize=8)
    latency.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", type=Path, help="the --csv prefix of the run")
    parser.add_argument("--out", type=Path, help="PNG (default: <prefix>.png)")
    parser.add_argument("--title", default="locust run")
    args = parser.parse_args()
    out = plot(read_history(args.prefix), args.out or args.prefix.with_suffix(".png"), args.title)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
