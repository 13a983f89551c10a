"""`kerve`: serve a model repository, publish a Keras file into it, list its models.

    kerve serve [options]                         what `python -m service` does
    kerve serve --zoo fast|full [options]         and trains the missing demo models behind it
    kerve publish MODEL.keras --name N --task T   check a model, publish its next version
    kerve models [--url URL | --models-dir DIR]   models, versions and states as a table
    kerve api-key                                 a new API key and its line for a keys file

The service (and with it Keras) is imported inside the subcommands that need it,
so that `kerve models` answers at once.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

import kerve_manifest

if TYPE_CHECKING:
    import keras

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODELS_DIR = os.environ.get("SERVE_MODELS_DIR", "models")
API_KEY_VARIABLE = "KERVE_API_KEY"  # the key `kerve models --url` sends, when the server wants one
# Tasks whose manifests need what a Keras file does not say.
NOT_INFERABLE = {
    "captioning": "a captioner's manifest needs its vocabulary",
    "generation": "a generator's manifest needs its latent size",
}
LABELLED_TASKS = ("classification", "segmentation", "generation")
IMAGE_TASKS = ("classification", "segmentation", "denoising", "upscaling")
TILED_TASKS = ("denoising", "upscaling")  # any image size, on overlap tiles with margins
DENOISING_TILE = 256  # a denoiser that takes any size is tiled as training/denoiser.py does
# An upscaler that takes any size: low-resolution tiles of 128, whose 8-pixel margins
# cost (128 / 112)² = 1.3x the work of the centres alone.
UPSCALING_TILE = 128
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CommandError(Exception):
    """Why a command cannot go on, told in one line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":  # every option is the service's own
        return serve(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except CommandError as error:
        print(f"kerve {args.command}: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerve", description="Kerve: serve Keras models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve", add_help=False, help="serve a model repository over HTTP (kerve serve --help)"
    )
    add_publish_parser(commands)
    add_models_parser(commands)
    add_api_key_parser(commands)
    return parser


ZOO_HELP = (
    "kerve serve --zoo fast|full: also build the missing demo models (training.zoo) behind "
    "the server, which picks each up as it is published; the training stops with the server"
)


def serve(options: list[str]) -> int:
    """``kerve serve [--zoo fast|full] [service options]``: with ``--zoo``, publish the
    ImageNet classifier if missing, then serve while the rest of the demo zoo trains in
    a child process group that stops with the server (the next run resumes it)."""
    from service import __main__ as service_main

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--zoo", choices=["fast", "full"])
    own, rest = parser.parse_known_args(options)
    service_args = service_main.parse_args(rest, "kerve serve", ZOO_HELP)  # --help ends here
    if own.zoo is None:
        service_main.main(rest, "kerve serve", ZOO_HELP)
        return 0
    given = {key: value for key, value in vars(service_args).items() if value is not None}
    settings = service_main.Settings(**given)  # the options, else SERVE_* variables
    # The zoo trains on the devices the server uses, with the same memory settings.
    zoo = start_zoo(own.zoo, Path(settings.models_dir), service_main.gpu_environment(settings))
    try:
        service_main.main(rest, "kerve serve", ZOO_HELP)
    finally:
        stop_zoo(zoo, Path(settings.models_dir), own.zoo)
    return 0


def start_zoo(profile: str, models_dir: Path, environment: dict[str, str]) -> subprocess.Popen:
    """Publish the ImageNet classifier (seconds) if missing, then start the rest of the zoo
    in its own process group, its output on this console. The zoo is sent SIGTERM if this
    process dies without stopping it (SIGKILL, a closed terminal): no orphan training."""
    zoo = [sys.executable, "-m", "training.zoo", "--if-missing", "--models-dir", str(models_dir)]
    first = "imagenet-classifier"
    print(f"kerve serve: publishing {first} if missing, then serving", flush=True)
    environment = {**os.environ, **environment}
    published = subprocess.run([*zoo, "--only", first], stdin=subprocess.DEVNULL, env=environment)
    if published.returncode != 0:
        print(f"kerve serve: {first} was not published; serving what there is", flush=True)
    child = subprocess.Popen(
        [*zoo, "--profile", profile, "--skip", first],
        stdin=subprocess.DEVNULL,
        env=environment,
        process_group=0,
        preexec_fn=_terminate_with_parent,
    )
    print(
        f"kerve serve: training the rest of the demo zoo ({profile} profile) behind the server "
        f"(pid {child.pid}); each model is served once published; it stops with the server",
        flush=True,
    )
    return child


def _terminate_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_zoo(child: subprocess.Popen, models_dir: Path, profile: str) -> None:
    """Terminate the zoo's process group (killed after 5 s); its PENDING files say so."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        print(
            f"kerve serve: stopped the demo zoo; `kerve serve --zoo {profile}` resumes it",
            flush=True,
        )
    from training.zoo import interrupt_pending

    interrupt_pending(models_dir)


# -- publish ---------------------------------------------------------------------------------


def add_publish_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "publish",
        help="check a .keras file against a task and publish it as the next version",
        description="Load MODEL the way the server will, check it against the task with a "
        "forward pass and publish it as the next version of NAME. A running server picks "
        "it up by its repository polling.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL.keras")
    parser.add_argument("--name", required=True, help="the model's name in the repository")
    parser.add_argument("--task", required=True, choices=sorted(kerve_manifest.MANIFEST_TYPES))
    parser.add_argument("--labels", type=Path, help="class names, one a line, by output index")
    parser.add_argument(
        "--scaling",
        help="pixel scaling of an image input: raw, unit (the default), symmetric or MEAN,STD",
    )
    parser.add_argument("--batching", help='batching knobs as JSON: {"max_batch_size": 8}')
    parser.add_argument("--models-dir", type=Path, default=Path(DEFAULT_MODELS_DIR))
    parser.add_argument(
        "--output",
        choices=["probabilities", "logits"],
        help="a classifier's last layer: softmax probabilities (the default) or raw logits",
    )
    parser.add_argument(
        "--scale",
        type=int,
        help="an upscaler's output pixels per input pixel, per axis (default: measured with "
        "a forward pass)",
    )
    parser.add_argument(
        "--margin",
        type=int,
        help="a denoiser's or upscaler's tile margin in input pixels, context only: at least "
        "the model's receptive radius for seamless tiles (default: 16 for denoising, 8 for "
        "upscaling)",
    )
    parser.add_argument("--description", default="", help="one line on what the model does")
    parser.set_defaults(run=publish)


def publish(args: argparse.Namespace) -> int:
    check_options(args)
    labels = read_labels(args.labels) if args.labels else None
    batching = parse_batching(args.batching)
    import kerve_backend

    with kerve_backend.stderr_held(expected=(CommandError,)):
        model = load_model(args.model)
        manifest = build_manifest(args, model, labels, batching)
        check_task(model, manifest)
        target = write_version(model, manifest, args.models_dir, args.name)
    print(f"published {args.name} version {target.name}: {target}")
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before any loading, what the options alone show is wrong."""
    if args.task in NOT_INFERABLE:
        raise CommandError(
            f"{NOT_INFERABLE[args.task]}, which a .keras file does not hold; publish a "
            f"{args.task} model from Python with kerve_publish.publish"
        )
    if not NAME_PATTERN.fullmatch(args.name):
        raise CommandError(f"--name {args.name!r}: letters, digits, '.', '_' and '-' only")
    if args.task in LABELLED_TASKS and args.labels is None:
        raise CommandError(f"a {args.task} model needs --labels FILE (one label a line)")
    if args.task not in LABELLED_TASKS and args.labels is not None:
        raise CommandError(f"a {args.task} model has no labels; leave out --labels")
    if args.task not in IMAGE_TASKS and args.scaling is not None:
        raise CommandError(f"a {args.task} model takes no images; leave out --scaling")
    if args.task != "upscaling" and args.scale is not None:
        raise CommandError("--scale is for an upscaling model")
    if args.task not in TILED_TASKS and args.margin is not None:
        raise CommandError(f"--margin is for a tiled task ({' or '.join(TILED_TASKS)})")


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read the labels file {path}: {one_line(error)}") from error
    labels = [line.strip() for line in lines if line.strip()]
    duplicates = sorted(label for label, count in collections.Counter(labels).items() if count > 1)
    if duplicates:
        raise CommandError(f"the labels file {path} repeats {', '.join(duplicates)}")
    return labels


def parse_batching(text: str | None) -> kerve_manifest.BatchingSpec:
    if text is None:
        return kerve_manifest.BatchingSpec()
    try:
        return kerve_manifest.BatchingSpec.model_validate_json(text)
    except pydantic.ValidationError as error:
        raise CommandError(f"--batching: {describe(error)}") from error


def load_model(path: Path) -> keras.Model:
    """Load ``path`` as the server does: a .keras archive, safe mode, not compiled."""
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise CommandError(f"{path} is not a .keras file (a zip archive Keras saved)")
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise CommandError(f"{path} does not load: {one_line(error)}") from error


def build_manifest(
    args: argparse.Namespace,
    model: keras.Model,
    labels: list[str] | None,
    batching: kerve_manifest.BatchingSpec,
) -> kerve_manifest.BaseManifest:
    fields: dict[str, Any] = {
        "batching": batching,
        "description": args.description,
        "provenance": {"source": str(args.model.resolve())},
    }
    if args.task in IMAGE_TASKS:
        fields["input"] = input_spec(model, args.task, args.scaling or "unit")
    if args.output is not None:
        if args.task != "classification":
            raise CommandError("--output is for a classification model")
        fields["output"] = args.output
    if labels is not None:
        fields["labels"] = labels
    margin = {} if args.margin is None else {"margin": args.margin}
    try:
        if args.task == "denoising":
            sigma_input = len(model.inputs) == 2
            fields["denoising"] = kerve_manifest.DenoisingSpec(sigma_input=sigma_input, **margin)
        if args.task == "upscaling":
            scale = args.scale or measured_scale(model, fields["input"])
            fields["upscaling"] = kerve_manifest.UpscalingSpec(scale=scale, **margin)
        return kerve_manifest.MANIFEST_TYPES[args.task](**fields)
    except pydantic.ValidationError as error:
        raise CommandError(f"invalid manifest: {describe(error)}") from error


def measured_scale(model: keras.Model, spec: kerve_manifest.InputSpec) -> int:
    """How many times larger a blank tile comes out of an upscaler (its --scale unsaid)."""
    import numpy as np

    try:
        upscaled = model.predict_on_batch(np.zeros((1, spec.height, spec.width, spec.channels)))
    except Exception as error:
        raise CommandError(f"the model does not run on a tile: {one_line(error)}") from error
    if isinstance(upscaled, dict | list | tuple) or np.ndim(upscaled) != 4:
        raise CommandError("an upscaler has one output, an image (batch, height, width, channels)")
    height, width = np.shape(upscaled)[1:3]
    scale = height // spec.height
    if (height, width) != (scale * spec.height, scale * spec.width):
        raise CommandError(
            f"a {spec.width}x{spec.height} tile comes out {width}x{height}, not a whole number "
            "of times larger: an upscaler's output is --scale times its input"
        )
    return scale


def input_spec(model: keras.Model, task: str, scaling: str) -> kerve_manifest.InputSpec:
    """Height, width and channels from the model's (first) input, with the pixel scaling."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise CommandError(
            f"a {task} model takes images (batch, height, width, 1 or 3 channels); "
            f"this one's input is shaped {shape}"
        )
    height, width, channels = shape[1:]
    if task in TILED_TASKS and height is None and width is None:
        height = width = DENOISING_TILE if task == "denoising" else UPSCALING_TILE
    if height is None or width is None:
        raise CommandError(f"the model's input {shape} does not fix the image height and width")
    if scaling in kerve_manifest.PIXEL_SCALINGS:
        return kerve_manifest.InputSpec.scaled(height, width, channels, scaling)
    try:
        mean, std = (float(value) for value in scaling.split(","))
        return kerve_manifest.InputSpec(
            height=height, width=width, channels=channels, mean=[mean], std=[std]
        )
    except (ValueError, pydantic.ValidationError) as error:
        raise CommandError(
            f"--scaling {scaling!r}: raw, unit, symmetric or MEAN,STD with STD > 0"
        ) from error


def check_task(model: keras.Model, manifest: kerve_manifest.BaseManifest) -> None:
    """The task runtime's own load-time check, a forward pass for the image tasks."""
    from service.runtimes import RUNTIMES

    try:
        RUNTIMES[manifest.task].validate(model, manifest)
    except Exception as error:
        raise CommandError(
            f"the model does not fit the {manifest.task} task: {one_line(error)}"
        ) from error


def write_version(
    model: keras.Model, manifest: kerve_manifest.BaseManifest, models_dir: Path, name: str
) -> Path:
    """Publish atomically; on failure, take away the folders this call made."""
    import kerve_publish

    made = [path for path in (models_dir / name, models_dir) if not path.exists()]
    try:
        return kerve_publish.publish(model, manifest, models_dir, name)
    except Exception as error:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: the staging folder is gone already
        raise CommandError(f"cannot publish into {models_dir}: {one_line(error)}") from error


# -- models ----------------------------------------------------------------------------------


def add_models_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "models",
        help="list the models, their versions and states",
        description="List a server's models (its GET /v1/models) or a repository folder's. "
        f"A server with API keys on gets the key in ${API_KEY_VARIABLE}.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help=f"a running server (default {DEFAULT_URL})")
    source.add_argument("--models-dir", type=Path, help="a model repository folder")
    parser.set_defaults(run=list_models)


def list_models(args: argparse.Namespace) -> int:
    if args.models_dir is not None:
        rows = folder_rows(args.models_dir)
    else:
        rows = server_rows(args.url or DEFAULT_URL)
    print(format_table(["NAME", "VERSION", "STATE", "TASK"], rows))
    return 0


def server_rows(url: str) -> list[list[str]]:
    address = f"{url.rstrip('/')}/v1/models"
    key = os.environ.get(API_KEY_VARIABLE)
    request = urllib.request.Request(address, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            listing = json.load(response)
    except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors
        raise CommandError(f"cannot list the models of {address}: {one_line(error)}") from error
    rows = []
    for model in listing["models"]:
        for version in model["versions"] or [{}]:
            rows.append(
                [
                    model["name"],
                    str(version.get("version", "-")),
                    version.get("state", "-"),
                    version.get("task") or "-",
                    version.get("error") or "",
                ]
            )
    return rows


def folder_rows(models_dir: Path) -> list[list[str]]:
    if not models_dir.is_dir():
        raise CommandError(f"{models_dir} is not a folder")
    rows = []
    for model_dir in sorted(models_dir.iterdir()):
        if model_dir.is_dir() and not model_dir.name.startswith("."):
            for version in kerve_manifest.list_versions(model_dir):
                state = version_state(model_dir / str(version))
                rows.append([model_dir.name, str(version), *state])
    return rows


def version_state(version_dir: Path) -> list[str]:
    """[state, task, reason] of a version folder, from its files alone (nothing is loaded)."""
    try:
        manifest = kerve_manifest.read_manifest(version_dir)
    except (OSError, ValueError) as error:
        return ["INVALID", "-", one_line(error, 200)]
    if not zipfile.is_zipfile(version_dir / kerve_manifest.MODEL_FILE):
        return ["INVALID", manifest.task, f"{kerve_manifest.MODEL_FILE} is missing or not a zip"]
    return ["PUBLISHED", manifest.task, ""]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned columns; a last column of reasons (ERROR) only when a row has one."""
    if any(row[len(header)] for row in rows):
        header = [*header, "ERROR"]
    rows = [header, *(row[: len(header)] for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*map(str.ljust, row[:-1], widths), row[-1]]) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


# -- api-key ---------------------------------------------------------------------------------


def add_api_key_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "api-key",
        help="make a new API key and print its line for a keys file",
        description="Print a new random API key, for the client, and its sha256: line for "
        "the keys file SERVE_API_KEYS_FILE names (the server needs only the hash).",
    )
    parser.add_argument(
        "--append",
        type=Path,
        metavar="FILE",
        help="append the sha256: line to FILE (made if missing) and print only the key",
    )
    parser.set_defaults(run=make_api_key)


def make_api_key(args: argparse.Namespace) -> int:
    import secrets

    from service.auth import hashed_line

    key = secrets.token_urlsafe(32)
    if args.append is None:
        print(key)
        print(hashed_line(key))
        return 0
    try:
        ends_a_line = not args.append.exists() or args.append.read_bytes()[-1:] in (b"", b"\n")
        with args.append.open("a", encoding="utf-8") as keys_file:
            keys_file.write(("" if ends_a_line else "\n") + hashed_line(key) + "\n")
    except OSError as error:
        raise CommandError(f"cannot append to {args.append}: {one_line(error)}") from error
    print(key)
    return 0


# -- messages --------------------------------------------------------------------------------


def describe(error: pydantic.ValidationError) -> str:
    """A validation error's reasons on one line."""
    return "; ".join(
        f"{'.'.join(map(str, item['loc'])) or 'value'}: {item['msg']}" for item in error.errors()
    )


def one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
