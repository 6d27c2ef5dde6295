"""What goes over the wire: request bodies and answer parsing for the two HTTP protocols.

- ``v2``: the Open Inference Protocol (KServe, NVIDIA Triton, Seldon MLServer,
  TorchServe's KServe mode). Images go as one FP32 tensor; the answer is a score
  tensor (n, C), or an INT64 ``labels`` tensor (n, k) with an optional ``scores``.
  With ``binary`` the tensors travel as raw bytes both ways (the binary tensor data
  extension, :mod:`.binary_tensors`); answers may then be FP16, FP32 or FP64.
- ``json``: a simple endpoint taking base64 PNGs and answering, per image, a list of
  probabilities, a best-first list of ``{label, score}`` objects, or a label.

Both turn an answer into per-image records in the query log's format (see
:mod:`.querylog`): ``{"output": [...]}`` or ``{"labels": [...], "scores": [...]}``.
Parsing is strict: a malformed answer is an error naming what was wrong, never a guess.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import TracemarkError
from .binary_tensors import (
    CONTENT_TYPE,
    EXTENSION,
    HEADER_LENGTH,
    BinaryBodyError,
    frame,
    read_tensors,
    split_body,
)
from .grpc_messages import reply_outputs
from .querylog import MAX_LABEL, check_answer, check_numbers

__all__ = [
    "JsonCodec",
    "JsonFields",
    "V2Codec",
    "WireRequest",
    "check_batches",
    "server_offers_binary",
]

Layout = Literal["nchw", "nhwc"]
_V2_FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_V2_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
LABEL_OUTPUTS = ("labels", "label")


class MalformedAnswer(TracemarkError):
    """The endpoint's answer does not have the shape the protocol promises."""


@dataclass(frozen=True)
class WireRequest:
    """A request body as sent, in parts (a binary tensor is sent from the array's own
    memory, never copied into one big bytes object), with the headers that say how to
    read it."""

    parts: tuple[bytes | memoryview, ...]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(memoryview(p).nbytes for p in self.parts)

    @property
    def content(self) -> bytes:
        """The whole body as one bytes object (a copy: for tests and benches)."""
        return b"".join(self.parts)

    def stream(self) -> Iterator[bytes | memoryview]:
        """The parts, afresh for each try of the request."""
        yield from self.parts


_EIGHT_BIT = np.arange(256, dtype=np.float32) / np.float32(255)
_EIGHT_BIT_TEXT = np.array([repr(float(v)) for v in _EIGHT_BIT], dtype=object)


def eight_bit_json_numbers(x: np.ndarray) -> str | None:
    """``x``'s values as comma-separated JSON numbers when every one is an 8-bit value
    k/255 (as read from an image file), else None. The text is ``repr`` of each value as
    a float, what ``json.dumps`` writes, so the server reads the same float32 values."""
    codes = np.rint(x * np.float32(255))
    if not (x.size and codes.min() >= 0 and codes.max() <= 255):  # NaN: None
        return None
    codes = codes.astype(np.uint8)
    if not np.array_equal(_EIGHT_BIT[codes], x):
        return None
    return ",".join(_EIGHT_BIT_TEXT[codes.ravel()])


def json_request(payload: object) -> WireRequest:
    """A JSON request body, as sent."""
    return WireRequest((json.dumps(payload).encode("utf-8"),), {"Content-Type": "application/json"})


def server_offers_binary(server_metadata: object) -> bool:
    """Whether ``GET /v2`` lists the binary tensor data extension."""
    extensions = server_metadata.get("extensions") if isinstance(server_metadata, dict) else None
    return isinstance(extensions, list) and EXTENSION in extensions


class JsonFields(BaseModel):
    """Field names of a simple JSON endpoint (configurable: every API names them its own way)."""

    model_config = ConfigDict(extra="forbid")

    images: str = Field("images", description="request field holding the base64 PNGs")
    predictions: str = Field("predictions", description="answer field holding one entry per image")
    label: str = Field("label", description="label key in a {label, score} object")
    score: str = Field("score", description="score key in a {label, score} object")


class V2Codec:
    """Open Inference Protocol v2 REST: ``POST /v2/models/{name}[/versions/{v}]/infer``."""

    protocol = "v2"

    def __init__(
        self,
        model_name: str,
        version: str | None = None,
        input_name: str | None = None,
        layout: Layout = "nchw",
        output_name: str | None = None,
        binary: bool = False,
    ) -> None:
        if not model_name or "/" in model_name:
            raise TracemarkError(
                f"the v2 protocol needs a model name without '/' (--model-name), got {model_name!r}"
            )
        if layout not in ("nchw", "nhwc"):
            raise TracemarkError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
        self.model_name = model_name
        self.model_path = f"/v2/models/{model_name}" + (f"/versions/{version}" if version else "")
        self.input_name = input_name
        self.layout: Layout = layout
        self.output_name = output_name
        self.binary = binary

    @property
    def infer_path(self) -> str:
        return self.model_path + "/infer"

    def configure(self, metadata: object) -> None:
        """Take the input name and layout from the model's metadata where not set."""
        inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
        if not inputs or not isinstance(inputs[0], dict):
            return
        first = inputs[0]
        if self.input_name is None and isinstance(first.get("name"), str):
            self.input_name = first["name"]
        shape = first.get("shape")
        if isinstance(shape, list) and len(shape) == 4:
            if shape[1] in (1, 3) and shape[3] not in (1, 3):
                self.layout = "nchw"
            elif shape[3] in (1, 3) and shape[1] not in (1, 3):
                self.layout = "nhwc"

    def input_tensor(self, images: np.ndarray) -> np.ndarray:
        """The images as the model takes them: FP32, C-contiguous, in its layout."""
        x = images.transpose(0, 3, 1, 2) if self.layout == "nchw" else images
        return np.ascontiguousarray(x, dtype=np.float32)

    def _input_spec(self, x: np.ndarray) -> dict[str, Any]:
        return {"name": self.input_name or "input", "shape": list(x.shape), "datatype": "FP32"}

    def encode(self, images: np.ndarray) -> dict[str, Any]:
        """The JSON request body (numbers as text)."""
        return self._json_body(self.input_tensor(images))

    def _json_body(self, x: np.ndarray) -> dict[str, Any]:
        return {"inputs": [{**self._input_spec(x), "data": x.ravel().tolist()}]}

    def request(self, images: np.ndarray) -> WireRequest:
        """The request as sent: JSON, or (``binary``) a JSON header and the raw FP32 bytes,
        asking for every output as raw bytes too."""
        if not self.binary:
            return self._json_request(images)
        x = self.input_tensor(images)  # C-contiguous little-endian FP32, sent as it is
        data = memoryview(x.astype("<f4", copy=False)).cast("B")
        header = {
            "inputs": [{**self._input_spec(x), "parameters": {"binary_data_size": data.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
        head = frame(header, [])[0]
        headers = {"Content-Type": CONTENT_TYPE, HEADER_LENGTH: str(len(head))}
        return WireRequest((head, data), headers)

    def _json_request(self, images: np.ndarray) -> WireRequest:
        """The JSON request; images from 8-bit files (every value k/255) have their numbers
        written from a 256-entry table, the very text ``json.dumps`` writes for them, about
        ten times faster than formatting each one."""
        x = self.input_tensor(images)
        text = eight_bit_json_numbers(x)
        if text is None:
            return json_request(self._json_body(x))
        head = json.dumps({"inputs": [self._input_spec(x)]})
        body = f'{head[:-3]}, "data": [{text}]}}]}}'
        return WireRequest((body.encode("ascii"),), {"Content-Type": "application/json"})

    def decode(self, body: object, n: int) -> list[dict[str, Any]]:
        """Answers from a parsed JSON body (binary tensors already read into arrays)."""
        return _checked(self._decode(body, n))

    def decode_binary(
        self, content: bytes, header_length: str | int, n: int
    ) -> list[dict[str, Any]]:
        """Answers from a body framed with the binary extension (also a logged payload)."""
        try:
            header, raw = split_body(content, header_length)
            outputs = header.get("outputs") if isinstance(header, dict) else None
            if not isinstance(outputs, list) or not outputs:
                raise MalformedAnswer(
                    f"a v2 answer needs a non-empty 'outputs' list; got {_preview(header)}"
                )
            header = {**header, "outputs": read_tensors(outputs, raw, "outputs")}
        except BinaryBodyError as exc:
            raise MalformedAnswer(f"the binary answer is malformed: {exc}") from None
        return self.decode(header, n)

    def _decode(self, body: object, n: int) -> list[dict[str, Any]]:
        outputs = body.get("outputs") if isinstance(body, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise MalformedAnswer(
                f"a v2 answer needs a non-empty 'outputs' list; got {_preview(body)}"
            )
        by_name = {o.get("name"): o for o in outputs if isinstance(o, dict)}
        if self.output_name is not None:
            if self.output_name not in by_name:
                raise MalformedAnswer(
                    f"the answer has no output {self.output_name!r} "
                    f"(it has {sorted(map(str, by_name))})"
                )
            return _score_rows(_tensor(by_name[self.output_name], n))
        label_name = next((name for name in LABEL_OUTPUTS if name in by_name), None)
        if label_name is not None:
            labels = _tensor(by_name[label_name], n, integer=True)
            scores = _tensor(by_name["scores"], n) if "scores" in by_name else None
            if scores is not None and scores.shape != labels.shape:
                raise MalformedAnswer(
                    f"'scores' has shape {scores.shape} but 'labels' has {labels.shape}"
                )
            return _label_rows(labels, scores)
        return _score_rows(_tensor(outputs[0], n))


def _tensor(spec: object, n: int, integer: bool = False) -> np.ndarray:
    """A v2 output tensor as an (n, k) array, checked against its declared shape and type."""
    if not isinstance(spec, dict):
        raise MalformedAnswer(f"an output must be an object, got {_preview(spec)}")
    name, dtype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if integer and dtype not in _V2_INTS:
        raise MalformedAnswer(f"output {name!r} holds labels but has datatype {dtype!r}")
    if not integer and dtype not in _V2_FLOATS and dtype not in _V2_INTS:
        raise MalformedAnswer(
            f"output {name!r} has datatype {dtype!r}; expected FP16, FP32 or FP64"
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise MalformedAnswer(f"output {name!r} has no valid 'shape'")
    raw = spec.get("data")
    if isinstance(raw, np.ndarray):  # read from binary bytes, typed by its datatype
        data = raw.astype(np.float64)
    elif not isinstance(raw, list):
        raise MalformedAnswer(f"output {name!r} has no 'data' list")
    else:
        flat = _flatten(raw, str(name))
        try:
            data = np.asarray(check_numbers(flat, f"output {name!r}", "data"), dtype=np.float64)
        except TracemarkError as exc:
            raise MalformedAnswer(str(exc)) from None
    if shape and shape[0] == n and len(shape) == 1:
        shape = [n, 1]  # a label per image, as a vector
    if len(shape) != 2 or shape[0] != n:
        raise MalformedAnswer(f"output {name!r} has shape {shape}; expected [{n}, classes]")
    if data.size != shape[0] * shape[1]:
        raise MalformedAnswer(
            f"output {name!r} declares shape {shape} but carries {data.size} values"
        )
    if not np.isfinite(data).all():
        raise MalformedAnswer(f"output {name!r} has non-finite values")
    out = data.reshape(shape)
    if integer:
        if (out < 0).any() or (out >= MAX_LABEL).any() or (out != np.round(out)).any():
            raise MalformedAnswer(f"output {name!r} must hold integer labels in [0, {MAX_LABEL})")
        return out.astype(np.int64)
    return out


def _checked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every answer, of either protocol, passes the one validator the query log applies."""
    try:
        return [check_answer(r, f"answer {i}") for i, r in enumerate(records)]
    except TracemarkError as exc:
        raise MalformedAnswer(str(exc)) from None


def _flatten(data: list, name: str, depth: int = 0) -> list:
    """v2 ``data`` may be flat or nested row-major; anything but numbers in it is an error."""
    if depth > 8:
        raise MalformedAnswer(f"output {name!r} nests its data too deeply")
    out: list = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v, name, depth + 1))
        else:
            out.append(v)
    return out


def _score_rows(scores: np.ndarray) -> list[dict[str, Any]]:
    if scores.shape[1] < 2:
        raise MalformedAnswer(
            f"the answer has {scores.shape[1]} score per image; a classifier needs at least 2"
        )
    return [{"output": row} for row in scores.tolist()]


def _label_rows(labels: np.ndarray, scores: np.ndarray | None) -> list[dict[str, Any]]:
    if scores is None:
        return [{"labels": row} for row in labels.tolist()]
    rows = zip(labels.tolist(), scores.tolist(), strict=True)
    return [{"labels": row, "scores": s} for row, s in rows]


class JsonCodec:
    """A simple JSON endpoint: ``{"images": [base64 PNG]}`` in, ``{"predictions": [...]}`` out.

    Images are sent as 8-bit PNGs, so they are rounded to 1/255 steps: query images
    read from 8-bit files lose nothing. Labels may be class indices, or names when
    ``class_names`` is given.
    """

    protocol = "json"

    def __init__(self, fields: JsonFields | None = None, class_names: Sequence[str] | None = None):
        self.fields = fields or JsonFields()
        self.class_names = list(class_names) if class_names else None
        self.infer_path = ""

    def request(self, images: np.ndarray) -> WireRequest:
        return json_request(self.encode(images))

    def encode(self, images: np.ndarray) -> dict[str, Any]:
        from PIL import Image

        pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
        encoded = []
        for x in pixels:
            buf = io.BytesIO()
            img = Image.fromarray(x[..., 0], "L") if x.shape[-1] == 1 else Image.fromarray(x, "RGB")
            img.save(buf, format="PNG")
            encoded.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        return {self.fields.images: encoded}

    def decode(self, body: object, n: int) -> list[dict[str, Any]]:
        return _checked(self._decode(body, n))

    def _decode(self, body: object, n: int) -> list[dict[str, Any]]:
        field = self.fields.predictions
        preds = body.get(field) if isinstance(body, dict) else None
        if not isinstance(preds, list):
            raise MalformedAnswer(f"the answer has no list {field!r}; got {_preview(body)}")
        if len(preds) != n:
            raise MalformedAnswer(f"the answer has {len(preds)} predictions for {n} images")
        return [self._one(p, i) for i, p in enumerate(preds)]

    def _one(self, pred: object, i: int) -> dict[str, Any]:
        where = f"prediction {i}"
        if isinstance(pred, dict):
            pred = [pred]
        elif not isinstance(pred, list):
            return {"labels": [self._label(pred, where)]}
        if not pred:
            raise MalformedAnswer(f"{where} is empty")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pred):
            return {"output": pred}  # checked with the rest in decode()
        if not all(isinstance(v, dict) for v in pred):
            raise MalformedAnswer(
                f"{where} must be a list of scores or of {{label, score}} objects, got "
                f"{_preview(pred)}"
            )
        key, score_key = self.fields.label, self.fields.score
        labels = [self._label(v.get(key), where) for v in pred]
        if len(set(labels)) != len(labels):
            raise MalformedAnswer(f"{where} lists a label twice")
        if all(score_key in v for v in pred):
            scores = [v[score_key] for v in pred]
            if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
                raise MalformedAnswer(f"{where} has a non-numeric {score_key!r}")
            return {"labels": labels, "scores": scores}
        return {"labels": labels}

    def _label(self, value: object, where: str) -> int:
        if isinstance(value, bool):
            raise MalformedAnswer(f"{where}: label {value!r} is not a class")
        if isinstance(value, int) and 0 <= value < MAX_LABEL:
            return value
        if isinstance(value, str):
            if self.class_names and value in self.class_names:
                return self.class_names.index(value)
            if value.isascii() and value.isdigit() and len(value) < 8:
                return int(value)
            raise MalformedAnswer(
                f"{where}: label {value!r} is not a class index"
                + ("" if self.class_names else "; pass --class-names to map names to indices")
            )
        raise MalformedAnswer(f"{where}: label {_preview(value)} is not a class")


def _preview(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def decode_reply(codec: V2Codec, raw: bytes, n: int) -> list[dict[str, Any]]:
    """Answers from a gRPC ModelInferResponse's bytes (also a logged one)."""
    try:
        outputs = reply_outputs(raw)
    except BinaryBodyError as exc:
        raise MalformedAnswer(f"the gRPC answer is malformed: {exc}") from None
    return codec.decode({"outputs": outputs}, n)


def check_batches(log: Any) -> None:
    """Decode every binary answer a query log keeps (HTTP binary bodies, gRPC replies) and
    check it gives the answers the log records for its images: an edit to either is
    refused, whichever was edited."""
    if not log.batches:
        return
    header = log.header
    codec = V2Codec(
        str(header.get("model_name") or "model"), output_name=header.get("output_name"), binary=True
    )
    for number, batch in enumerate(log.batches, start=1):
        where = f"query log {log.path}, binary answer {number}"
        images = batch["images"]
        try:
            if batch.get("wire") == "grpc":
                decoded = decode_reply(codec, batch["response"], len(images))
            else:
                decoded = codec.decode_binary(
                    batch["response"], batch["header_length"], len(images)
                )
        except MalformedAnswer as exc:
            raise TracemarkError(f"{where} does not decode: {exc}") from None
        for sha, answer in zip(images, decoded, strict=True):
            if log.answers.get(sha) != answer:
                raise TracemarkError(
                    f"{where}: the answer recorded for image {sha[:12]}... is not what the "
                    "model's bytes say; the log was edited, so it cannot be trusted as a "
                    "record of the model's answers"
                )
