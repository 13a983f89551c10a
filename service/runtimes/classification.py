"""Classification: images in, top-k labels with scores out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydantic

from service import imaging
from service.admission import Cost
from service.errors import BadRequest
from service.runtimes.base import Agreement, Prepared, Runtime, forward_blank

DEFAULT_TOP_K = 5


class ClassifyParams(pydantic.BaseModel):
    top_k: int | None = pydantic.Field(
        None,
        ge=1,
        description=f"Labels per image, best first (default {DEFAULT_TOP_K}, "
        "at most the number of classes).",
    )


@dataclasses.dataclass(frozen=True)
class ClassifyRequest:
    images: list[bytes]
    top_k: int | None = None  # None: DEFAULT_TOP_K, or every class if there are fewer


class Prediction(pydantic.BaseModel):
    label: str
    index: int
    score: float


class ClassifyResponse(pydantic.BaseModel):
    model: str
    version: int
    predictions: list[list[Prediction]] = pydantic.Field(
        description="One list per input image, in input order, best first."
    )


class ClassificationRuntime(Runtime):
    task = "classification"
    verb = "classify"
    summary = "Classify one or more images: the top-k labels of each, with scores."
    Params = ClassifyParams
    Response = ClassifyResponse
    takes_encoded_images = True

    @classmethod
    def make_request(cls, params: ClassifyParams, images: list[bytes]) -> ClassifyRequest:
        return ClassifyRequest(images, params.top_k)

    def cost(self, request: ClassifyRequest) -> Cost:
        return self.sample_images_cost(request.images)

    @classmethod
    def validate(cls, model, manifest) -> None:
        outputs = forward_blank(model, manifest)
        expected = (1, len(manifest.labels))
        if outputs.shape != expected:
            raise ValueError(
                f"the model's outputs have shape {(None, *outputs.shape[1:])}, but the "
                f"manifest's {len(manifest.labels)} labels need {(None, *expected[1:])}"
            )

    def agreement(self, reference, candidate, tolerance: float) -> Agreement:
        """The same top-1 class on every sample, and probabilities within 0.02. A flip where
        Keras's own top two are closer than that is a tie, not a disagreement."""
        want, got = reference.astype(np.float64), candidate.astype(np.float64)
        if self.manifest.output == "logits":
            want, got = _softmax(want), _softmax(got)
        limit = 0.02 * tolerance
        top_two = np.sort(want, axis=-1)[:, -2:]
        flipped = (want.argmax(-1) != got.argmax(-1)) & (top_two[:, 1] - top_two[:, 0] > limit)
        difference = float(np.abs(want - got).max())
        same = len(want) - int(flipped.sum())
        return Agreement(
            same == len(want) and difference <= limit,
            f"same top-1 on {same}/{len(want)}, probabilities within {difference:.2g}",
        )

    def top_k(self, request: ClassifyRequest) -> int:
        num_classes = len(self.manifest.labels)
        if request.top_k is None:
            return min(DEFAULT_TOP_K, num_classes)
        if not 1 <= request.top_k <= num_classes:
            raise BadRequest(f"top_k must be between 1 and {num_classes}, got {request.top_k}")
        return request.top_k

    def preprocess(self, request: ClassifyRequest) -> Prepared:
        self.top_k(request)  # refuse a bad top_k before any decoding or inference
        spec = self.manifest.input
        return Prepared(
            np.stack([imaging.load_sample(d, spec, self.max_image_pixels) for d in request.images])
        )

    def postprocess(
        self, outputs: np.ndarray, request: ClassifyRequest, context: None
    ) -> ClassifyResponse:
        scores = outputs.astype(np.float64)
        if self.manifest.output == "logits":
            scores = _softmax(scores)
        labels = self.manifest.labels
        top_k = self.top_k(request)
        predictions = []
        for row in scores:
            best = np.argsort(-row, kind="stable")[:top_k]
            predictions.append(
                [Prediction(label=labels[i], index=int(i), score=float(row[i])) for i in best]
            )
        return ClassifyResponse(model=self.name, version=self.version, predictions=predictions)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
