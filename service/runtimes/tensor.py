"""Tensor: any Keras model, named numeric tensors in and out, batched along the first axis.

A sample is a structured row with one field per model input, so requests share
batches whatever their inputs hold; the outputs come back as a structured row with
one field per model output. Names, dtypes and shapes are the model's own: the
manifest needs no labels and no pixel scaling. The task has no route of its own:
clients reach it through the Open Inference Protocol v2 and TF Serving's REST API.
"""

from __future__ import annotations

import keras
import numpy as np

from service import tensors
from service.runtimes.base import Prepared, Runtime, layer_name


class TensorRuntime(Runtime):
    task = "tensor"

    def __init__(self, name, version, model: keras.Model, *args, **kwargs) -> None:
        super().__init__(name, version, model, *args, **kwargs)
        self.inputs = model_tensors(named_inputs(model))
        self.outputs = model_tensors(named_outputs(model))
        self.by_name = _as_dict(model, "input") is not None  # else a list, or one tensor
        self.sample_dtype = _row_dtype(self.inputs)
        self.output_dtype = _row_dtype(self.outputs)

    @classmethod
    def validate(cls, model: keras.Model, manifest) -> None:
        """Tensors that can be batched and sent, and a forward pass of one blank sample."""
        inputs = model_tensors(named_inputs(model))
        model_tensors(named_outputs(model))
        blank = {spec.name: np.zeros((1, *spec.shape), spec.dtype) for spec in inputs}
        if _as_dict(model, "input") is not None:
            model.predict_on_batch(blank)
        else:
            model.predict_on_batch([blank[spec.name] for spec in inputs])

    def blank_samples(self, size: int) -> np.ndarray:
        return np.zeros(size, self.sample_dtype)

    def preprocess(self, request: dict[str, np.ndarray]) -> Prepared:
        return self._join_tensors(request)

    cost = Runtime.tensors_cost  # a request is its named tensors

    def predict_batch(self, samples: np.ndarray) -> np.ndarray:
        feed = [np.ascontiguousarray(samples[spec.name]) for spec in self.inputs]
        if self.by_name:
            feed = {spec.name: x for spec, x in zip(self.inputs, feed, strict=True)}
        elif len(feed) == 1:
            feed = feed[0]
        produced = self.engine.predict(feed)
        if isinstance(produced, dict):
            produced = [produced[spec.name] for spec in self.outputs]
        elif not isinstance(produced, list | tuple):
            produced = [produced]
        outputs = np.empty(len(samples), self.output_dtype)
        for spec, values in zip(self.outputs, produced, strict=True):
            outputs[spec.name] = np.asarray(values)
        return outputs

    postprocess = Runtime._split_tensors  # the answer is the named outputs themselves


def named_inputs(model: keras.Model) -> list[tuple[str, keras.KerasTensor]]:
    """(name, tensor) of each input: a dict's keys, else the input layers' names."""
    by_name = _as_dict(model, "input")
    if by_name is not None:
        return list(by_name.items())
    return [(layer_name(tensor), tensor) for tensor in model.inputs]


def named_outputs(model: keras.Model) -> list[tuple[str, keras.KerasTensor]]:
    """(name, tensor) of each output: a dict's keys, else the output layers' names."""
    by_name = _as_dict(model, "output")
    if by_name is not None:
        return list(by_name.items())
    return [(layer_name(tensor), tensor) for tensor in model.outputs]


def _as_dict(model: keras.Model, attribute: str) -> dict | None:
    """The model's inputs or outputs if given as a dict (a Sequential model has no
    ``input`` structure of its own after loading: only ``inputs``)."""
    try:
        structure = getattr(model, attribute)
    except AttributeError:
        return None
    return structure if isinstance(structure, dict) else None


def model_tensors(named: list[tuple[str, keras.KerasTensor]]) -> list[tensors.TensorSpec]:
    """The model's tensors as specs (ValueError for what cannot be batched or sent)."""
    specs = []
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"the model's tensors need distinct names, not {names}")
    for name, tensor in named:
        shape = tuple(tensor.shape[1:])
        if None in shape:
            raise ValueError(
                f"tensor {name!r} has shape {(None, *shape)}: a served model needs every axis "
                "but the batch axis fixed, so that samples stack into batches"
            )
        try:
            dtype = np.dtype(tensor.dtype)
        except TypeError:  # bfloat16, string: no numpy type to carry them
            dtype = None
        if dtype is None or dtype not in tensors.V2_DATATYPES.values():
            raise ValueError(f"tensor {name!r} is {tensor.dtype}; a served model takes numbers")
        specs.append(tensors.TensorSpec(name, dtype, shape))
    return specs


def _row_dtype(specs: list[tensors.TensorSpec]) -> np.dtype:
    return np.dtype([(spec.name, spec.dtype, spec.shape) for spec in specs])
