"""Generation: a class label, a count and a seed in; that many generated images out (PNG).

The model takes ``[latent float32 (batch, latent_dim), label int32 (batch, 1)]`` and
returns images of ``manifest.input``'s shape and scaling (kerve_manifest.GenerationSpec).
Each image is one sample, a structured row (latent, label), so the images of
concurrent requests share batches whatever their labels. Image i of a request with
seed s comes from seed s + i alone (``latent_vector``): a request for 8 images from
seed 100 returns the images of 8 requests for one from seeds 100 to 107, however
the batches fall.
"""

from __future__ import annotations

import math
import secrets
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
from PIL import Image

from service import imaging
from service.admission import Cost
from service.errors import BadRequest
from service.runtimes.base import Agreement, PngBody, PngImage, Prepared, Runtime, relative_error

MAX_COUNT = 64  # images per request
# Every image's seed s + i is an exact JSON number (RFC 8259's interoperable integers, below
# 2**53): a JavaScript client, or a validator reading numbers as doubles (schemathesis took
# 2**63 + 191 for 2**63 - 65, the old bound), sees the seed the server does.
MAX_SEED = 2**53 - 1 - MAX_COUNT
MIN_TRUNCATION, MAX_TRUNCATION = 0.1, 4.0  # below 0.1 resampling takes many rounds
RANDOM_SEEDS = 2**31  # a seed drawn for the client is below this: short to type back
GRID_GAP = 2  # pixels of background (0) between the images of a PNG grid
LABELS_LISTED = 20  # known labels an error message lists before "..."
SEED_HEADER = "X-Kerve-Seed"  # a PNG grid has no JSON to report its seed in


def _integral(value: Any) -> Any:
    """JSON Schema's integer: 7 and 7.0 alike (one number in JSON), never "7" or 7.5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema has it: strict otherwise, so "7", 7.5 and true are refused.
JsonInt = Annotated[int, pydantic.Strict(), pydantic.BeforeValidator(_integral)]
# Its bounds before the validator: after it (as on `JsonInt | None`) pydantic still checks them
# but documents "ge"/"le", which JSON Schema ignores (schemathesis sent seed -1).
Seed = Annotated[
    int, pydantic.Strict(), pydantic.Field(ge=0, le=MAX_SEED), pydantic.BeforeValidator(_integral)
]
# A bool passes here and is refused with the model's labels (400), like any label the
# model does not have; "7" is the name "7", not the index.
Label = Annotated[
    pydantic.StrictStr | pydantic.StrictBool | JsonInt,
    pydantic.WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}),
]


class GenerateRequest(pydantic.BaseModel):
    """What to generate: images of one class."""

    model_config = pydantic.ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"label": "sneaker", "count": 4, "seed": 42},
                {"label": 7, "count": 9, "truncation": 0.7},
            ]
        },
    )

    label: Label = pydantic.Field(
        description="The class: a name from the model's labels (GET /v1/models/{name}; "
        "case-insensitive if unambiguous) or its index."
    )
    count: JsonInt = pydantic.Field(
        default=1,
        ge=1,
        le=MAX_COUNT,
        description=f"Images to make, 1 to {MAX_COUNT} (and at most the server's "
        "max_images_per_request).",
    )
    seed: Seed | None = pydantic.Field(
        default=None,
        description="Image i is made from seed + i alone, so equal seeds give equal images. "
        "Omitted: drawn at random and reported.",
    )
    truncation: float | None = pydantic.Field(
        default=None,
        ge=MIN_TRUNCATION,
        le=MAX_TRUNCATION,
        description="Truncation trick: latent values beyond +-truncation are drawn again. "
        "Smaller is more typical and less varied.",
    )


class GeneratedImage(PngImage):
    seed: int = pydantic.Field(description="Makes this image alone: the request's seed + i.")


class GenerateResponse(pydantic.BaseModel):
    model: str
    version: int
    label: str = pydantic.Field(description="The class the images show, as in the model's labels.")
    label_index: int = pydantic.Field(description="Its index into the model's labels.")
    seed: int = pydantic.Field(description="The request's seed, the client's or drawn at random.")
    truncation: float | None = pydantic.Field(description="Latent truncation used, if any.")
    width: int
    height: int
    mode: Literal["L", "RGB"] = pydantic.Field(description="L for a 1-channel model, else RGB.")
    images: list[GeneratedImage] = pydantic.Field(description="Image i was made from seed + i.")
    _pictures: list[Image.Image] = pydantic.PrivateAttr(default_factory=list)

    def as_png(self) -> PngBody:
        """``Accept: image/png``: the images as one grid, their seed in a header."""
        grid = imaging.encode_png(grid_image(self._pictures))
        return PngBody(grid, {SEED_HEADER: str(self.seed)})


class GenerationRuntime(Runtime):
    task = "generation"
    verb = "generate"
    summary = "Generate images of one class: JSON with base64 PNGs, or one PNG grid."
    Params = GenerateRequest
    body = "params"
    Response = GenerateResponse

    def __init__(self, name, version, model, manifest, *args, **kwargs) -> None:
        super().__init__(name, version, model, manifest, *args, **kwargs)
        self.latent_dim = manifest.generation.latent_dim
        self.mean = np.asarray(manifest.input.mean, np.float32)
        self.std = np.asarray(manifest.input.std, np.float32)
        self.sample_dtype = np.dtype(
            [("latent", np.float32, (self.latent_dim,)), ("label", np.int32)]
        )
        self.mode = "L" if manifest.input.channels == 1 else "RGB"

    @classmethod
    def validate(cls, model, manifest) -> None:
        """The inputs [latent, label], and images of the manifest's shape out."""
        latent_dim = manifest.generation.latent_dim
        shapes = [tuple(tensor.shape[1:]) for tensor in model.inputs]
        if shapes != [(latent_dim,), (1,)]:
            raise ValueError(
                f"a generator takes [latent (batch, {latent_dim}), label (batch, 1)] as the "
                f"manifest says, but the model's inputs are shaped "
                f"{[(None, *shape) for shape in shapes]}"
            )
        spec = manifest.input
        made = np.asarray(
            model.predict_on_batch(
                [np.zeros((1, latent_dim), np.float32), np.zeros((1, 1), "int32")]
            )
        )
        if made.shape[1:] != (spec.height, spec.width, spec.channels):
            raise ValueError(
                f"the model makes images of shape {made.shape[1:]}, the manifest's input says "
                f"{(spec.height, spec.width, spec.channels)}"
            )

    @classmethod
    def images_asked(cls, params: GenerateRequest) -> int:
        return params.count

    def blank_samples(self, size: int) -> np.ndarray:
        return np.zeros(size, self.sample_dtype)

    def agreement(self, reference, candidate, tolerance: float) -> Agreement:
        """Images within 2% relative error (pixel rounding included)."""
        error = relative_error(reference, candidate)
        return Agreement(error <= 0.02 * tolerance, f"relative error {error:.2g} in pixels")

    def check_samples(self, samples: np.ndarray) -> None:
        labels = samples["label"]
        if labels.min() < 0 or labels.max() >= len(self.manifest.labels):
            raise BadRequest(f"label indices run from 0 to {len(self.manifest.labels) - 1}")

    def label_index(self, label: str | int | bool) -> int:
        """The index of a label given by name (exact, else case-insensitive) or by index."""
        labels = self.manifest.labels
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
            return label
        if isinstance(label, str):
            if label in labels:
                return labels.index(label)
            folded = [i for i, known in enumerate(labels) if known.casefold() == label.casefold()]
            if len(folded) == 1:
                return folded[0]
        listed = ", ".join(f"{i} {known!r}" for i, known in enumerate(labels[:LABELS_LISTED]))
        more = f", ... ({len(labels)} in all)" if len(labels) > LABELS_LISTED else ""
        raise BadRequest(
            f"model {self.name!r} has no label {label!r:.60}; give a name or an index from 0 to "
            f"{len(labels) - 1}: {listed}{more}"
        )

    def cost(self, request: GenerateRequest) -> Cost:
        spec = self.manifest.input
        return Cost(request.count * spec.height * spec.width, request.count)

    def preprocess(self, request: GenerateRequest) -> Prepared:
        index = self.label_index(request.label)
        seed = secrets.randbelow(RANDOM_SEEDS) if request.seed is None else request.seed
        samples = self.blank_samples(request.count)
        samples["label"] = index
        for i in range(request.count):
            samples["latent"][i] = latent_vector(seed + i, self.latent_dim, request.truncation)
        return Prepared(samples, (index, seed))

    def predict_batch(self, samples: np.ndarray) -> np.ndarray:
        """A batch of (latent, label) rows made into uint8 images."""
        outputs = np.asarray(
            self.engine.predict([samples["latent"], samples["label"][:, np.newaxis]])
        )
        pixels = outputs * self.std + self.mean
        return np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels).astype(np.uint8)

    def postprocess(
        self, outputs: np.ndarray, request: GenerateRequest, context: tuple[int, int]
    ) -> GenerateResponse:
        index, seed = context
        planes = outputs[..., 0] if self.mode == "L" else outputs
        images = [Image.fromarray(pixels, self.mode) for pixels in planes]
        response = GenerateResponse(
            model=self.name,
            version=self.version,
            label=self.manifest.labels[index],
            label_index=index,
            seed=seed,
            truncation=request.truncation,
            width=self.manifest.input.width,
            height=self.manifest.input.height,
            mode=self.mode,
            images=[GeneratedImage.of(image, seed=seed + i) for i, image in enumerate(images)],
        )
        response._pictures = images
        return response


def latent_vector(seed: int, latent_dim: int, truncation: float | None = None) -> np.ndarray:
    """The latent of one image: standard normal float32 values from ``seed`` alone.

    With ``truncation`` (BigGAN's trick) values beyond +-truncation are drawn again
    from the same generator until inside: deterministic, and the values already
    inside stay the ones the untruncated latent has.
    """
    if truncation is not None and not MIN_TRUNCATION <= truncation <= MAX_TRUNCATION:
        raise ValueError(f"truncation must be {MIN_TRUNCATION} to {MAX_TRUNCATION}: {truncation}")
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal(latent_dim, dtype=np.float32)
    if truncation is not None:
        outside = np.abs(latent) > truncation
        while outside.any():
            latent[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
            outside = np.abs(latent) > truncation
    return latent


def grid_image(images: list[Image.Image]) -> Image.Image:
    """The images in rows of ceil(sqrt(n)), in order, GRID_GAP background pixels apart."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    size = (columns * (width + GRID_GAP) - GRID_GAP, rows * (height + GRID_GAP) - GRID_GAP)
    grid = Image.new(images[0].mode, size)  # filled with 0: black
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid.paste(image, (column * (width + GRID_GAP), row * (height + GRID_GAP)))
    return grid
