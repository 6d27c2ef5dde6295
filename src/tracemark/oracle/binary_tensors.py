"""The v2 protocol's binary tensor data extension: tensors as raw bytes after a JSON header.

Triton and KServe define it (``binary_tensor_data``): the body is a JSON header, whose
length the ``Inference-Header-Content-Length`` HTTP header gives, followed by each
tensor that declares ``parameters.binary_data_size`` as that many raw little-endian
bytes, in the order the header lists them. An FP32 224x224x3 image is 602 KB this way
against about 1.5 MB as JSON text, and neither side parses 150,000 numbers.

Both the client (:mod:`.wire`) and ``tracemark serve`` frame and read bodies here, and
the query log keeps a binary answer's bytes whole, so a third party can decode them
again (:func:`read_tensors` is the one reader). Every size is checked: a body whose
tensors do not add up to its length is an error, never a guess.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import TracemarkError

__all__ = [
    "CONTENT_TYPE",
    "DTYPES",
    "EXTENSION",
    "HEADER_LENGTH",
    "BinaryBodyError",
    "frame",
    "read_tensors",
    "split_body",
    "tensor_bytes",
]

EXTENSION = "binary_tensor_data"  # as a server lists it in GET /v2's "extensions"
HEADER_LENGTH = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "BOOL": "bool",
        "UINT8": "u1",
        "UINT16": "u2",
        "UINT32": "u4",
        "UINT64": "u8",
        "INT8": "i1",
        "INT16": "i2",
        "INT32": "i4",
        "INT64": "i8",
        "FP16": "f2",
        "FP32": "f4",
        "FP64": "f8",
    }.items()
}
MAX_HEADER = 1 << 20  # a JSON header longer than 1 MiB is not a tensor header


class BinaryBodyError(TracemarkError):
    """A body framed with the binary extension whose sizes or types do not add up."""


def frame(header: Mapping[str, Any], tensors: Sequence[bytes]) -> tuple[bytes, int]:
    """The body: ``header`` as compact JSON, then the tensors' bytes; and the header's length."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([head, *tensors]), len(head)


def split_body(body: bytes, header_length: str | int | None) -> tuple[Any, bytes]:
    """(the parsed JSON header, the binary rest) of a body; no header length: all JSON."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            n = int(header_length)
        except (TypeError, ValueError):
            raise BinaryBodyError(f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if not 0 < n <= min(len(body), MAX_HEADER):
            raise BinaryBodyError(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
        head, rest = body[:n], body[n:]
    try:
        return json.loads(head), rest
    except (UnicodeDecodeError, ValueError) as exc:
        raise BinaryBodyError(f"the body's JSON header does not parse: {exc}") from None


def read_tensors(specs: object, raw: bytes, what: str) -> list[dict[str, Any]]:
    """``specs`` (a header's "inputs" or "outputs") with each binary tensor's bytes read
    from ``raw`` into ``"data"`` as a flat array of its datatype. Tensors carrying JSON
    ``data`` are left as they are. The binary tensors must use up ``raw`` exactly.
    """
    if not isinstance(specs, list):
        raise BinaryBodyError(f"the {what} must be a list")
    out, at = [], 0
    for spec in specs:
        if not isinstance(spec, dict):
            raise BinaryBodyError(f"each of the {what} must be an object")
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            out.append(spec)
            continue
        name, dtype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if dtype not in DTYPES:
            raise BinaryBodyError(f"tensor {name!r} has datatype {dtype!r}, not a binary type")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise BinaryBodyError(f"tensor {name!r} has no valid 'shape'")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BinaryBodyError(f"tensor {name!r} has an invalid binary_data_size {size!r}")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if size != expected:
            raise BinaryBodyError(
                f"tensor {name!r} declares {size} bytes, but {dtype} {shape} takes {expected}"
            )
        if at + size > len(raw):
            raise BinaryBodyError(
                f"tensor {name!r} needs {size} bytes at offset {at}, but only "
                f"{len(raw) - at} follow the header"
            )
        data = np.frombuffer(raw, dtype=DTYPES[dtype], count=math.prod(shape), offset=at)
        out.append({**spec, "data": data})
        at += size
    if at != len(raw):
        raise BinaryBodyError(
            f"{len(raw) - at} bytes follow the header's {what} that no tensor declares"
        )
    return out


def tensor_bytes(values: np.ndarray, datatype: str) -> bytes:
    """``values`` as the little-endian bytes of ``datatype``."""
    return np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes()
