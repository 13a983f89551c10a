"""Captioning: images in, captions out, decoded (greedy or beam) by batch inside predict_batch.

The model.keras holds two sub-models: ``encoder`` (image batch -> [*context, *initial
states]) and ``decoder`` (one step: [token, *context, *states] -> [log_probs, *new
states]). A sample is a structured row: the image and its request's decoding options.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pydantic

from service import decoding, imaging
from service.admission import Cost
from service.batching import BatchConfig
from service.errors import BadRequest
from service.runtimes.base import Agreement, Prepared, Runtime

MAX_BEAM_SIZE = 8


class CaptionParams(pydantic.BaseModel):
    beam_size: int = pydantic.Field(
        1,
        ge=1,
        le=MAX_BEAM_SIZE,
        description=f"Beams per image, 1 to {MAX_BEAM_SIZE} (1: greedy decoding); "
        "with more, the other beams come back as alternatives.",
    )
    max_length: int | None = pydantic.Field(
        None, ge=1, description="Most words per caption (default and limit: the model's)."
    )


@dataclasses.dataclass(frozen=True)
class CaptionRequest:
    images: list[bytes]
    beam_size: int = 1
    max_length: int | None = None  # words; None: the model's max_length


class Alternative(pydantic.BaseModel):
    caption: str
    log_prob: float = pydantic.Field(description="Log-probability of the caption and its end.")
    ended: bool = pydantic.Field(description="False if max_length cut the caption short.")


class Caption(Alternative):
    alternatives: list[Alternative] | None = pydantic.Field(
        None, description="With beam_size > 1: the other beams, best first."
    )


class CaptionResponse(pydantic.BaseModel):
    model: str
    version: int
    captions: list[Caption] = pydantic.Field(description="One per input image, in input order.")


class CaptioningRuntime(Runtime):
    task = "captioning"
    verb = "caption"
    summary = "Caption one or more images (greedy or beam search)."
    Params = CaptionParams
    Response = CaptionResponse

    def __init__(self, name, version, model: keras.Model, manifest, *args, **kwargs) -> None:
        self.encoder, self.decoder = split_captioner(model, manifest)
        super().__init__(name, version, model, manifest, *args, **kwargs)
        text = manifest.text
        self.num_context = len(self.encoder.outputs) - (len(self.decoder.outputs) - 1)
        specials = (text.padding_token, text.start_token, text.unknown_token)
        self.special = decoding.SpecialTokens(
            start=text.index(text.start_token),
            end=text.index(text.end_token),
            banned=tuple(text.index(token) for token in specials),
        )
        self.sample_dtype = np.dtype(
            [("image", np.float32, self.sample_shape), ("beam_size", np.int32),
             ("max_length", np.int32)]
        )  # fmt: skip
        beams = (MAX_BEAM_SIZE,)
        self.output_dtype = np.dtype(
            [("tokens", np.int32, (*beams, text.max_length)), ("lengths", np.int32, beams),
             ("log_probs", np.float64, beams), ("ended", np.bool_, beams)]
        )  # fmt: skip
        # Decoder rows (samples x beams) are padded like batches, to sizes warmed up at load.
        self.decoder_rows = BatchConfig(max_batch_size=self.batching.max_batch_size * MAX_BEAM_SIZE)

    @classmethod
    def validate(cls, model, manifest) -> None:
        split_captioner(model, manifest)

    @classmethod
    def make_request(cls, params: CaptionParams, images: list[bytes]) -> CaptionRequest:
        return CaptionRequest(images, params.beam_size, params.max_length)

    def cost(self, request: CaptionRequest) -> Cost:
        return self.sample_images_cost(request.images)

    def options(self, request: CaptionRequest) -> tuple[int, int]:
        limit = self.manifest.text.max_length
        max_length = limit if request.max_length is None else request.max_length
        if not 1 <= request.beam_size <= MAX_BEAM_SIZE:
            raise BadRequest(
                f"beam_size must be between 1 and {MAX_BEAM_SIZE}, got {request.beam_size}"
            )
        if not 1 <= max_length <= limit:
            raise BadRequest(f"max_length must be between 1 and {limit}, got {max_length}")
        return request.beam_size, max_length

    def check_samples(self, samples: np.ndarray) -> None:
        limit = self.manifest.text.max_length
        for field, high in (("beam_size", MAX_BEAM_SIZE), ("max_length", limit)):
            if samples[field].min() < 1 or samples[field].max() > high:
                raise BadRequest(f"{field} must be between 1 and {high}")

    def blank_samples(self, size: int) -> np.ndarray:
        samples = np.zeros(size, self.sample_dtype)
        samples["beam_size"], samples["max_length"] = MAX_BEAM_SIZE, 1  # the beam path, briefly
        return samples

    def compiled_parts(self) -> dict[str, keras.Model]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def probe_samples(self, size: int) -> np.ndarray:
        samples = super().probe_samples(size)
        samples["beam_size"], samples["max_length"] = 1, self.manifest.text.max_length
        return samples

    def agreement(self, reference, candidate, tolerance: float) -> Agreement:
        """The same greedy caption for 3 in 4 samples: random pixels make near ties."""
        same = sum(
            np.array_equal(
                want["tokens"][0, : want["lengths"][0]], got["tokens"][0, : got["lengths"][0]]
            )
            for want, got in zip(reference, candidate, strict=True)
        )
        return Agreement(
            same >= (1 - 0.25 * tolerance) * len(reference),
            f"the same caption for {same}/{len(reference)}",
        )

    def warm_up(self) -> None:
        super().warm_up()  # every batch size through predict_batch: encoder and decode loop
        try:
            for rows in self.decoder_rows.batch_sizes:
                blank = [np.zeros((rows, *x.shape[1:]), x.dtype) for x in self.decoder.inputs[1:]]
                self._inference_thread.submit(self._step, np.zeros(rows, np.int32), blank).result()
        except BaseException:
            self._inference_thread.shutdown(wait=False)
            raise

    def preprocess(self, request: CaptionRequest) -> Prepared:
        beam_size, max_length = self.options(request)
        samples = np.zeros(len(request.images), self.sample_dtype)
        for index, data in enumerate(request.images):
            samples["image"][index] = imaging.load_sample(
                data, self.manifest.input, self.max_image_pixels
            )
        samples["beam_size"], samples["max_length"] = beam_size, max_length
        return Prepared(samples)

    def predict_batch(self, samples: np.ndarray) -> np.ndarray:
        encoded = _as_list(self.engines["encoder"].predict(np.ascontiguousarray(samples["image"])))
        found = decoding.decode(
            self._step, encoded, samples["beam_size"], samples["max_length"], self.special
        )
        outputs = np.zeros(len(samples), self.output_dtype)
        outputs["tokens"], outputs["log_probs"] = -1, -np.inf
        beams, length = found.tokens.shape[1:]
        outputs["tokens"][:, :beams, :length] = found.tokens
        outputs["lengths"][:, :beams] = found.lengths
        outputs["log_probs"][:, :beams] = found.log_probs
        outputs["ended"][:, :beams] = found.ended
        return outputs

    def _step(self, tokens: np.ndarray, inputs: list[np.ndarray]):
        """One decoder call for every row, padded to a warmed-up row count."""
        rows = len(tokens)
        padding = self.decoder_rows.padded_size(rows) - rows
        feed = [
            np.pad(x, [(0, padding)] + [(0, 0)] * (x.ndim - 1)) for x in (tokens[:, None], *inputs)
        ]
        log_probs, *states = _as_list(self.engines["decoder"].predict(feed))
        return log_probs[:rows], [*inputs[: self.num_context], *(s[:rows] for s in states)]

    def postprocess(self, outputs: np.ndarray, request: CaptionRequest, context: None):
        captions = []
        for row in outputs:
            beams = [
                Alternative(
                    caption=self._text(tokens[:length]), log_prob=float(log_prob), ended=bool(ended)
                )
                for tokens, length, log_prob, ended in zip(
                    row["tokens"], row["lengths"], row["log_probs"], row["ended"], strict=True
                )
                if np.isfinite(log_prob)
            ]
            others = beams[1:] if request.beam_size > 1 else None
            captions.append(Caption(**beams[0].model_dump(), alternatives=others))
        return CaptionResponse(model=self.name, version=self.version, captions=captions)

    def _text(self, tokens: np.ndarray) -> str:
        return " ".join(self.manifest.text.vocabulary[t] for t in tokens)


def split_captioner(model: keras.Model, manifest) -> tuple[keras.Model, keras.Model]:
    """The encoder and decoder sub-models, checked against the contract (ValueError if not)."""
    layers = {layer.name: layer for layer in model.layers}
    encoder, decoder = layers.get("encoder"), layers.get("decoder")
    if not (isinstance(encoder, keras.Model) and isinstance(decoder, keras.Model)):
        raise ValueError("a captioner must hold two sub-models named 'encoder' and 'decoder'")
    spec, encoded = manifest.input, _shapes(encoder.outputs)
    states = encoded[len(encoded) - (len(decoder.outputs) - 1) :]
    checks = [  # (what, the shapes it needs, the shapes it has)
        ("encoder inputs [image]", [(spec.height, spec.width, spec.channels)], encoder.inputs),
        ("decoder inputs [token, *context, *states]", [(1,), *encoded], decoder.inputs),
        ("decoder outputs [log_probs, *states]", [(len(manifest.text.vocabulary),), *states],
         decoder.outputs),
    ]  # fmt: skip
    broken = [f"{what} need shapes {want}, not {_shapes(got)}" for what, want, got in checks
              if _shapes(got) != want]  # fmt: skip
    if broken:
        raise ValueError("the captioner breaks the encoder/decoder contract: " + "; ".join(broken))
    return encoder, decoder


def _shapes(tensors) -> list[tuple]:
    return [tuple(tensor.shape[1:]) for tensor in tensors]


def _as_list(outputs) -> list[np.ndarray]:
    return [np.asarray(x) for x in outputs] if isinstance(outputs, list | tuple) else [outputs]
