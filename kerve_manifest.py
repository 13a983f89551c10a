"""The manifest format: the one contract between training and the service.

Every repository version is a folder ``<root>/<name>/<version>/`` holding
``model.keras`` and ``manifest.json``. Training writes the manifest, the service
reads it; neither imports the other, both import this module.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
PENDING_FILE = "PENDING"  # models/<name>/PENDING: a model still to come (the demo zoo)
SCHEMA_VERSION = 1

# Pixel scalings by name: a model input is (pixel - mean) / std, pixels in 0..255.
PIXEL_SCALINGS: dict[str, tuple[float, float]] = {
    "raw": (0.0, 1.0),  # the model normalises inside itself (EfficientNet, MobileNetV3)
    "unit": (0.0, 255.0),  # [0, 1]
    "symmetric": (127.5, 127.5),  # [-1, 1] (MobileNetV2, Inception)
}


class InputSpec(pydantic.BaseModel):
    """Shape and pixel scaling of one model input sample."""

    model_config = pydantic.ConfigDict(extra="forbid")

    height: int = pydantic.Field(gt=0)
    width: int = pydantic.Field(gt=0)
    channels: Literal[1, 3] = 3
    # Per-channel (pixel - mean) / std; one value means all channels alike.
    mean: list[float] = [0.0]
    std: list[float] = [255.0]

    @pydantic.field_validator("std")
    @classmethod
    def _std_positive(cls, std: list[float]) -> list[float]:
        if not std or any(value <= 0 for value in std):
            raise ValueError("std values must be positive")
        return std

    @classmethod
    def scaled(cls, height: int, width: int, channels: int = 3, scaling: str = "unit") -> InputSpec:
        """An InputSpec using one of the named PIXEL_SCALINGS."""
        if scaling not in PIXEL_SCALINGS:
            raise ValueError(f"unknown pixel scaling {scaling!r}; known: {sorted(PIXEL_SCALINGS)}")
        mean, std = PIXEL_SCALINGS[scaling]
        return cls(height=height, width=width, channels=channels, mean=[mean], std=[std])


class BatchingSpec(pydantic.BaseModel):
    """Dynamic-batching knobs; the service's settings may override each."""

    model_config = pydantic.ConfigDict(extra="forbid")

    max_batch_size: int = pydantic.Field(default=32, ge=1, le=1024)
    max_delay_ms: float = pydantic.Field(default=5.0, ge=0)
    max_queue: int = pydantic.Field(default=512, ge=1)  # in samples
    timeout_ms: float = pydantic.Field(default=10_000.0, gt=0)


class TextSpec(pydantic.BaseModel):
    """A captioning model's vocabulary: output index ``i`` is the token ``vocabulary[i]``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    vocabulary: list[str]
    padding_token: str = "<pad>"
    start_token: str = "<start>"
    end_token: str = "<end>"
    unknown_token: str = "<unk>"
    max_length: int = pydantic.Field(default=24, ge=1, le=256)  # words, end token excluded

    @pydantic.model_validator(mode="after")
    def _special_tokens_known(self) -> TextSpec:
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("vocabulary tokens must be unique")
        specials = (self.padding_token, self.start_token, self.end_token, self.unknown_token)
        missing = [token for token in specials if token not in self.vocabulary]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}")
        return self

    def index(self, token: str) -> int:
        return self.vocabulary.index(token)


class DenoisingSpec(pydantic.BaseModel):
    """How a denoiser is served: on overlapping tiles of ``input.height`` x ``input.width``.

    A tile's outer ``margin`` pixels are context only: each tile contributes its
    centre, so when the margin covers the model's receptive field the stitched
    image equals the whole image run at once.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    margin: int = pydantic.Field(default=16, ge=0)
    # Noise standard deviations (pixel levels, 0..255) the model was trained on.
    sigma_range: tuple[float, float] = (0.0, 50.0)
    # True when the model takes a second input, a noise-level map (sigma / 255 per
    # pixel, FFDNet-style); False for a blind model that estimates the noise itself.
    sigma_input: bool = False

    @pydantic.model_validator(mode="after")
    def _range_ordered(self) -> DenoisingSpec:
        low, high = self.sigma_range
        if not 0 <= low <= high:
            raise ValueError("sigma_range must be (low, high) with 0 <= low <= high")
        return self


class UpscalingSpec(pydantic.BaseModel):
    """How a super-resolution model is served: on overlapping low-resolution tiles of
    ``input.height`` x ``input.width`` whose outer ``margin`` pixels are context only;
    each tile comes back ``scale`` times larger and contributes its centre."""

    model_config = pydantic.ConfigDict(extra="forbid")

    scale: int = pydantic.Field(ge=2, le=8)  # output pixels per input pixel, per axis
    margin: int = pydantic.Field(default=8, ge=0)  # in input pixels


class GenerationSpec(pydantic.BaseModel):
    """How a class-conditional generator is served.

    The model takes ``[latent float32 (batch, latent_dim), label int32 (batch, 1)]``
    and returns images shaped as ``input`` says (the images it learned to make, its
    discriminator's input), scaled the same way: pixel = output * std + mean.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    latent_dim: int = pydantic.Field(gt=0, le=4096)


# Keys of the single flat manifest type of earlier releases that a task's own type has no field for:
# a version published before the union wrote them with these empty values.
_FLAT_DEFAULTS: dict[str, Any] = {
    "labels": [],
    "output": "probabilities",
    "text": None,
    "denoising": None,
    "generation": None,
}


class BaseManifest(pydantic.BaseModel):
    """What every task's manifest holds: the task, batching hints, metrics and provenance."""

    model_config = pydantic.ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    task: str
    batching: BatchingSpec = BatchingSpec()
    # This model answers its task's plain route (/v1/classify, ...) unless the server's
    # settings name another; among several, the first by name.
    default_for_task: bool = False
    description: str = ""  # one line: what the model knows, as a user should hear it
    metrics: dict[str, Any] = {}  # test metrics measured by the training run
    provenance: dict[str, Any] = {}  # script, arguments, data, time, git commit

    @pydantic.model_validator(mode="before")
    @classmethod
    def _drop_flat_defaults(cls, data: Any) -> Any:
        """Versions published with the flat manifest keep loading: their empty
        sections of other tasks are dropped, a filled one is still refused."""
        if isinstance(data, dict):
            data = {
                key: value
                for key, value in data.items()
                if key in cls.model_fields or _FLAT_DEFAULTS.get(key, ...) != value
            }
        return data

    @pydantic.field_validator("schema_version")
    @classmethod
    def _known_schema(cls, version: int) -> int:
        if not 1 <= version <= SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {version} is not one this Kerve reads (1 to {SCHEMA_VERSION}); "
                "upgrade Kerve to serve it"
            )
        return version


class ImageManifest(BaseManifest):
    """A task whose samples are images: their shape and pixel scaling."""

    input: InputSpec


class LabelledManifest(ImageManifest):
    labels: list[str]  # class names, by output index

    @pydantic.field_validator("labels")
    @classmethod
    def _two_labels(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise ValueError("a manifest with classes needs at least two labels")
        return labels


class ClassificationManifest(LabelledManifest):
    task: Literal["classification"] = "classification"
    # Whether the model ends in softmax or emits raw logits.
    output: Literal["probabilities", "logits"] = "probabilities"


class SegmentationManifest(LabelledManifest):
    task: Literal["segmentation"] = "segmentation"


class CaptioningManifest(ImageManifest):
    task: Literal["captioning"] = "captioning"
    text: TextSpec  # the decoder's vocabulary


def _check_tile_centre(input_spec: InputSpec, margin: int) -> None:
    tile = min(input_spec.height, input_spec.width)
    if 2 * margin >= tile:
        raise ValueError(f"a tile of {tile} px has no centre left inside margins of {margin} px")


class DenoisingManifest(ImageManifest):
    task: Literal["denoising"] = "denoising"
    denoising: DenoisingSpec  # tiling and noise levels

    @pydantic.model_validator(mode="after")
    def _tile_has_a_centre(self) -> DenoisingManifest:
        _check_tile_centre(self.input, self.denoising.margin)
        return self


class UpscalingManifest(ImageManifest):
    task: Literal["upscaling"] = "upscaling"
    upscaling: UpscalingSpec  # scale and tiling

    @pydantic.model_validator(mode="after")
    def _tile_has_a_centre(self) -> UpscalingManifest:
        _check_tile_centre(self.input, self.upscaling.margin)
        return self


class GenerationManifest(LabelledManifest):
    task: Literal["generation"] = "generation"
    generation: GenerationSpec  # the latent space


class TensorManifest(BaseManifest):
    """Any Keras model, tensors in and out: names, dtypes and shapes come from the model."""

    task: Literal["tensor"] = "tensor"


# One type per task, told apart by ``task``: the service's registry maps each to a runtime.
Manifest = Annotated[
    ClassificationManifest
    | SegmentationManifest
    | CaptioningManifest
    | DenoisingManifest
    | UpscalingManifest
    | GenerationManifest
    | TensorManifest,
    pydantic.Field(discriminator="task"),
]
MANIFEST_TYPES: dict[str, type[BaseManifest]] = {
    manifest_type.model_fields["task"].default: manifest_type
    for manifest_type in typing.get_args(typing.get_args(Manifest)[0])
}
_MANIFEST = pydantic.TypeAdapter(Manifest)


def read_manifest(version_dir: Path) -> BaseManifest:
    """Parse ``manifest.json`` in a version folder (ValueError if malformed)."""
    text = (Path(version_dir) / MANIFEST_FILE).read_text(encoding="utf-8")
    try:
        return _MANIFEST.validate_json(text)
    except pydantic.ValidationError as error:
        raise ValueError(f"invalid {MANIFEST_FILE}: {error}") from error


def write_manifest(version_dir: Path, manifest: BaseManifest) -> None:
    payload = manifest.model_dump(mode="json")
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    (Path(version_dir) / MANIFEST_FILE).write_text(text, encoding="utf-8")


def parse_version(name: str) -> int | None:
    """The version number a folder name stands for, or None if it is not one."""
    if not (name.isascii() and name.isdigit()) or name.startswith("0"):
        return None
    return int(name)


def list_versions(model_dir: Path) -> list[int]:
    """Published versions of one model, ascending (staging folders are skipped)."""
    if not Path(model_dir).is_dir():
        return []
    versions = (parse_version(child.name) for child in Path(model_dir).iterdir() if child.is_dir())
    return sorted(v for v in versions if v is not None)
