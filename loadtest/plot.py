"""Plot a locust run's history: users, requests and failures per second.

    python -m loadtest.plot loadtest/reports/ramp [--out loadtest/reports/ramp.png]

Reads ``<prefix>_stats_history.csv`` (locust writes it with ``--csv <prefix>``), the
"Aggregated" rows, one every few seconds. Its latency percentiles are not plotted:
in that file they cover the whole run so far, not the moment.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_history(prefix: Path) -> dict[str, list[float]]:
    """Seconds since the start, users, requests/s and failures/s (rolling averages)."""
    columns = {"users": "User Count", "rps": "Requests/s", "fps": "Failures/s"}
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
    figure, load = plt.subplots(figsize=(8, 3.6))
    load.plot(series["t"], series["rps"], label="requests/s", color="tab:blue")
    load.plot(series["t"], series["fps"], label="failures/s (503s included)", color="tab:red")
    answered = [r - f for r, f in zip(series["rps"], series["fps"], strict=True)]
    load.plot(series["t"], answered, label="answered/s", color="tab:green")
    load.set_ylabel("per second")
    load.set_xlabel("seconds")
    users = load.twinx()
    users.plot(series["t"], series["users"], "--", color="gray", label="users")
    users.set_ylabel("users")
    handles = load.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    load.legend(handles=handles, fontsize=8, loc="upper left")
    load.set_title(title, fontsize=10)
    load.grid(alpha=0.3)
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
