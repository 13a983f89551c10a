"""A load shape that ramps past saturation and back down.

    locust -f loadtest/ramp.py --headless --host http://localhost:8000

Users climb in steps to ``KERVE_RAMP_PEAK_USERS`` (default 64), hold there, and step
back down; a healthy server sheds the excess with 503s ("overloaded (503)" in the
failures) and answers normally again on the way down. Every user class of the
locustfile runs (pick some on the command line, or ``--tags``); the whole run lasts
``KERVE_RAMP_STEPS`` x 2 steps of ``KERVE_RAMP_STEP_S`` seconds plus the hold
(``KERVE_RAMP_HOLD_S``): 2.5 minutes by default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from locust import LoadTestShape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.locustfile import (  # noqa: E402, F401  (locust collects the user classes here)
    CaptionUser,
    ClassifyUser,
    DenoiseUser,
    GenerateUser,
    MixedUser,
    SegmentUser,
    UpscaleUser,
)


def ramp_stages(peak_users: int, steps: int, step_s: float, hold_s: float) -> list[tuple]:
    """(end time in s, users, spawn rate) for each stage: up, hold at the peak, down."""
    if peak_users < 1 or steps < 1 or step_s <= 0 or hold_s < 0:
        raise ValueError("the ramp needs peak_users, steps >= 1 and step_s > 0")
    levels = [max(1, round(peak_users * (i + 1) / steps)) for i in range(steps)]
    up = [*levels[:-1], peak_users]
    down = levels[-2::-1] + [1]
    stages, end = [], 0.0
    for users in up:
        end += step_s
        stages.append((end, users))
    end += hold_s
    stages.append((end, peak_users))
    for users in down:
        end += step_s
        stages.append((end, users))
    rate = max(1.0, peak_users / steps / max(step_s / 4, 1.0))  # each step reached in a quarter
    return [(end_s, users, rate) for end_s, users in stages]


class RampPastSaturation(LoadTestShape):
    """Steps up past the server's capacity, holds, steps back down, then stops."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = ramp_stages(
            peak_users=int(os.environ.get("KERVE_RAMP_PEAK_USERS", "64")),
            steps=int(os.environ.get("KERVE_RAMP_STEPS", "4")),
            step_s=float(os.environ.get("KERVE_RAMP_STEP_S", "15")),
            hold_s=float(os.environ.get("KERVE_RAMP_HOLD_S", "30")),
        )

    def tick(self):
        run_time = self.get_run_time()
        for end_s, users, rate in self.stages:
            if run_time < end_s:
                return users, rate
        return None
