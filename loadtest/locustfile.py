"""Locust users for Kerve: one per task, and a weighted mix of them all.

    locust -f loadtest/locustfile.py --host http://localhost:8000      # web UI on :8089
    locust -f loadtest/locustfile.py --headless -u 16 -r 4 -t 60s --tags denoise
    locust -f loadtest/locustfile.py --headless ... ClassifyUser GenerateUser

Each request is checked (loadtest/checks.py): a wrong status, schema or an empty
result is a failure, and an overloaded server's 503 is the failure "overloaded
(503)". A user picks its task's model, and the route that serves it, from ``GET
/v1/models`` at start and stops if none is AVAILABLE. ``KERVE_<VERB>_MODEL``
(``KERVE_CLASSIFY_MODEL``, ``_SEGMENT_``, ...: the verb of the task's route) names the
model to load; without it the task's default route serves (``/v1/classify`` takes
``imagenet-classifier`` in the demo zoo). ``KERVE_API_KEY`` is the key a server with
API keys on wants.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import sys
from pathlib import Path

from locust import FastHttpUser, between, events, tag, task
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `import loadtest` from anywhere

from loadtest import checks, payloads  # noqa: E402

logger = logging.getLogger("kerve.loadtest")

WAIT_S = (0.1, 0.5)  # think time between a user's requests


def served_models(listing: dict) -> dict[str, list[dict]]:
    """AVAILABLE models with a task route, by task, from a ``GET /v1/models`` body."""
    by_task: dict[str, list[dict]] = {}
    for model in listing.get("models", []):
        for version in model.get("versions", []):
            if version.get("state") == "AVAILABLE" and "task" in version.get("endpoints", {}):
                served = {**version, "name": model["name"], "model_endpoints": model["endpoints"]}
                by_task.setdefault(version["task"], []).append(served)
                break
    return by_task


class Endpoint:
    """Where one task's requests go, and what its model needs (a generator's labels)."""

    def __init__(self, task_name: str, models: list[dict]):
        if not models:
            raise LookupError(f"the server lists no AVAILABLE {task_name} model")
        verb = models[0]["endpoints"]["task"].rsplit("/", 1)[-1]
        variable = f"KERVE_{verb.upper()}_MODEL"
        wanted = os.environ.get(variable)
        chosen = [m for m in models if m["name"] == wanted] if wanted else models
        if not chosen:
            raise LookupError(f"{variable}={wanted!r} is not an AVAILABLE {task_name} model")
        # The model's own route (its newest version), else the task's default route.
        self.path = chosen[0]["model_endpoints"]["task"] if wanted else f"/v1/{verb}"
        self.labels = chosen[0].get("labels") or []


class KerveUser(FastHttpUser):
    """Finds the models it needs, then sends checked requests to them."""

    abstract = True
    wait_time = between(*WAIT_S)
    # A server with API keys on (README, "API keys") gets KERVE_API_KEY with every request.
    default_headers = (
        {"X-API-Key": os.environ["KERVE_API_KEY"]} if os.environ.get("KERVE_API_KEY") else None
    )
    tasks_needed: tuple[str, ...] | None = ()  # None: every task the server has a route for

    def on_start(self) -> None:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                raise StopUser()
            by_task = served_models(response.json())
        self.endpoints = {}
        for task_name in by_task if self.tasks_needed is None else self.tasks_needed:
            try:
                self.endpoints[task_name] = Endpoint(task_name, by_task.get(task_name, []))
            except LookupError as error:
                logger.warning("%s: no %s: %s", type(self).__name__, task_name, error)
        if not self.endpoints:
            logger.error("%s stops: the server has no model for %s", type(self).__name__,
                         ", ".join(self.tasks_needed or ("any task",)))  # fmt: skip
            raise StopUser()

    def post_checked(self, path: str, check, **request) -> None:
        """POST and fail the request unless its status and body pass ``check``."""
        name = path.split("?")[0]  # one stats line per endpoint, whatever the parameters
        with self.client.post(path, name=name, catch_response=True, **request) as response:
            body = _json(response.text)
            problem = checks.check_status(response.status_code, response.headers, body)
            if problem is None:
                problem = "not JSON" if body is None else check(body)
            if problem:
                response.failure(problem)
            else:
                response.success()

    def classify(self) -> None:
        endpoint = self.endpoints.get("classification")
        if endpoint is None:
            return
        if random.random() < 0.25:  # sometimes several JPEGs in one JSON request
            jpegs = [p for p in payloads.photo_payloads() if p.content_type == "image/jpeg"]
            images = random.sample(jpegs, min(4, len(jpegs)))
            body = {"images": [{"b64": base64.b64encode(p.body).decode()} for p in images]}
            self.post_checked(
                endpoint.path, lambda b: checks.check_classify(b, len(images)), json=body
            )
            return
        photo = random.choice(payloads.photo_payloads())
        self.post_checked(
            endpoint.path + "?top_k=3",
            lambda b: checks.check_classify(b, 1),
            data=photo.body,
            headers={"Content-Type": photo.content_type},
        )

    def segment(self) -> None:
        endpoint = self.endpoints.get("segmentation")
        if endpoint is None:
            return
        photo = random.choice(payloads.photo_payloads())
        self.post_checked(
            endpoint.path,
            lambda b: checks.check_segment(b, photo.width, photo.height),
            data=photo.body,
            headers={"Content-Type": photo.content_type},
        )

    def caption(self) -> None:
        endpoint = self.endpoints.get("captioning")
        if endpoint is None:
            return
        photo = random.choice(payloads.photo_payloads())
        beam_size = random.choice((1, 1, 1, 3))
        self.post_checked(
            f"{endpoint.path}?beam_size={beam_size}",
            lambda b: checks.check_caption(b, 1),
            data=photo.body,
            headers={"Content-Type": photo.content_type},
        )

    def denoise(self) -> None:
        endpoint = self.endpoints.get("denoising")
        if endpoint is None:
            return
        photo = random.choice(payloads.noisy_payloads())
        self.post_checked(
            endpoint.path,
            lambda b: checks.check_denoise(b, photo.width, photo.height),
            data=photo.body,
            headers={"Content-Type": photo.content_type},
        )

    def upscale(self) -> None:
        endpoint = self.endpoints.get("upscaling")
        if endpoint is None:
            return
        photo = random.choice(payloads.small_payloads())
        self.post_checked(
            endpoint.path,
            lambda b: checks.check_upscale(b, photo.width, photo.height),
            data=photo.body,
            headers={"Content-Type": photo.content_type},
        )

    def generate(self) -> None:
        endpoint = self.endpoints.get("generation")
        if endpoint is None or not endpoint.labels:
            return
        label, count = random.choice(endpoint.labels), random.choice((1, 4, 16))
        self.post_checked(
            endpoint.path,
            lambda b: checks.check_generate(b, label, count),
            json={"label": label, "count": count, "seed": random.randrange(2**31)},
        )


class ClassifyUser(KerveUser):
    tasks_needed = ("classification",)

    @tag("classify")
    @task
    def classify_photo(self) -> None:
        self.classify()


class SegmentUser(KerveUser):
    tasks_needed = ("segmentation",)

    @tag("segment")
    @task
    def segment_photo(self) -> None:
        self.segment()


class CaptionUser(KerveUser):
    tasks_needed = ("captioning",)

    @tag("caption")
    @task
    def caption_photo(self) -> None:
        self.caption()


class DenoiseUser(KerveUser):
    tasks_needed = ("denoising",)

    @tag("denoise")
    @task
    def denoise_photo(self) -> None:
        self.denoise()


class UpscaleUser(KerveUser):
    tasks_needed = ("upscaling",)

    @tag("upscale")
    @task
    def upscale_photo(self) -> None:
        self.upscale()


class GenerateUser(KerveUser):
    tasks_needed = ("generation",)

    @tag("generate")
    @task
    def generate_images(self) -> None:
        self.generate()


class MixedUser(KerveUser):
    """A realistic mix: mostly classification, a little of the heavy tasks.

    Run it alone with ``MixedUser`` on the command line or ``--tags mixed``.
    """

    tasks_needed = None

    @tag("mixed")
    @task(10)
    def classify_photo(self) -> None:
        self.classify()

    @tag("mixed")
    @task(4)
    def segment_photo(self) -> None:
        self.segment()

    @tag("mixed")
    @task(3)
    def caption_photo(self) -> None:
        self.caption()

    @tag("mixed")
    @task(2)
    def generate_images(self) -> None:
        self.generate()

    @tag("mixed")
    @task(1)
    def denoise_photo(self) -> None:
        self.denoise()

    @tag("mixed")
    @task(1)
    def upscale_photo(self) -> None:
        self.upscale()


@events.test_start.add_listener
def build_payloads(**_kwargs) -> None:
    """Encode the photos before any user starts: done lazily inside a task, the
    seconds it takes would block every greenlet and show up as latency."""
    payloads.photo_payloads()
    payloads.noisy_payloads()
    payloads.small_payloads()


@events.test_start.add_listener
def drop_users_without_tasks(environment, **_kwargs) -> None:
    """``--tags denoise`` leaves the other classes with no task, and locust would
    still spawn them (and fail "No tasks defined"); only classes with tasks run."""
    with_tasks = [user_class for user_class in environment.user_classes if user_class.tasks]
    if with_tasks and len(with_tasks) < len(environment.user_classes):
        environment.user_classes[:] = with_tasks


def _json(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
