"""How each system receives a request: the same body (a JPEG or PNG photo, or the JSON of
a generate request) in the carrier that system takes it in, since carrying it is part of
what each system costs.

- ``upload``: the body itself, with its media type (Kerve's task routes, the naive app, Ray
  Serve).
- ``multipart``: a ``multipart/form-data`` file part (BentoML's file input, which spools
  the part to a temporary file and hands the service its path).
- ``base64-json``: Kerve's JSON image form, ``{"image": {"b64": ...}}`` (LitServe, which
  reads JSON or forms only); a JSON body goes as it is.
- ``v2-bytes``: the Open Inference Protocol v2 with its binary tensor extension, the body
  as a one-element BYTES tensor and the response as a binary BYTES tensor (Triton).

Light on purpose: the peers' own virtual environments import it too.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct

UPLOAD, MULTIPART, BASE64_JSON, V2_BYTES = "upload", "multipart", "base64-json", "v2-bytes"
DESCRIPTIONS = {  # carrier: how the report says it
    UPLOAD: "the upload as the request body",
    MULTIPART: "a multipart/form-data file part",
    BASE64_JSON: 'base64 in JSON ({"image": {"b64": ...}})',
    V2_BYTES: "v2 binary tensor extension, a BYTES tensor",
}
MULTIPART_FIELD = "bodies"  # BentoML's batchable parameter is named after it
MULTIPART_BOUNDARY = "kerve-bench-boundary-7d1c"
V2_INPUT, V2_OUTPUT = "body", "response"  # the Triton model's tensors
V2_HEADER = "Inference-Header-Content-Length"


@dataclasses.dataclass(frozen=True)
class Wire:
    """What the load generator sends: one set of headers, every body in its carrier."""

    headers: dict[str, str]
    bodies: tuple[bytes, ...]


def carry(carrier: str, content_type: str, bodies: tuple[bytes, ...]) -> Wire:
    """``bodies`` of ``content_type`` as a system taking ``carrier`` receives them."""
    if carrier == UPLOAD:
        return Wire({"Content-Type": content_type}, bodies)
    if carrier == MULTIPART:
        return Wire(
            {"Content-Type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"},
            tuple(_multipart(body, content_type) for body in bodies),
        )
    if carrier == BASE64_JSON:
        if content_type == "application/json":
            return Wire({"Content-Type": content_type}, bodies)
        return Wire(
            {"Content-Type": "application/json"},
            tuple(
                json.dumps({"image": {"b64": base64.b64encode(body).decode()}}).encode()
                for body in bodies
            ),
        )
    if carrier == V2_BYTES:
        headers, carried = v2_binary(V2_INPUT, "BYTES", list(bodies), bytes_shape=[1, 1])
        return Wire(headers, tuple(carried))
    raise ValueError(f"unknown carrier {carrier!r}; choose from {', '.join(DESCRIPTIONS)}")


def body_of(payload: dict) -> bytes:
    """The body a ``base64-json`` payload carries (a JSON body carries itself)."""
    if "image" in payload:
        return base64.b64decode(payload["image"]["b64"])
    return json.dumps(payload).encode()


def v2_binary(
    input_name: str, datatype: str, values: list, bytes_shape: list[int] | None = None
) -> tuple[dict, list[bytes]]:
    """Bodies of the binary tensor data extension: a JSON header, then the raw tensor;
    the output comes back binary too. Every header is padded with spaces (JSON allows
    them) to one length, so that one Inference-Header-Content-Length fits every body.
    A BYTES value is one element, of shape ``bytes_shape`` ([1]; [1, 1] for a model that
    batches, whose shape leads with the batch)."""
    parts = []
    for value in values:
        if datatype == "BYTES":
            raw, shape = struct.pack("<I", len(value)) + value, bytes_shape or [1]
        else:
            raw, shape = value.astype("<f4").tobytes(), list(value.shape)
        entry = {"name": input_name, "datatype": datatype, "shape": shape}
        entry["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(
            {"inputs": [entry], "parameters": {"binary_data_output": True}}
        ).encode()
        parts.append((header, raw))
    length = max(len(header) for header, _ in parts)
    bodies = [header.ljust(length) + raw for header, raw in parts]
    headers = {"Content-Type": "application/octet-stream", V2_HEADER: str(length)}
    return headers, bodies


def _multipart(body: bytes, content_type: str) -> bytes:
    suffix = content_type.rsplit("/", 1)[-1]
    head = (
        f"--{MULTIPART_BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{MULTIPART_FIELD}"; filename="body.{suffix}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + body + f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()
