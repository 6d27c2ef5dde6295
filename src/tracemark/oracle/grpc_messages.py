"""The KServe v2 gRPC messages an audit needs, built from their descriptor at run time.

The Open Inference Protocol's gRPC API (``inference.GRPCInferenceService``, as Triton,
KServe and MLServer serve it) is defined by a .proto file. Generated ``_pb2`` modules are
tied to the protobuf release that generated them, so the few messages an audit uses are
declared here field for field (the same names, numbers and types as the .proto) and
protobuf builds their classes. Fields an audit does not use (``parameters`` maps) are
left out: protobuf skips fields it does not know, so a server that sends them is read
the same.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import numpy as np

from .binary_tensors import BinaryBodyError, read_tensors

SERVICE = "inference.GRPCInferenceService"
_CONTENTS = {  # typed contents fields by datatype, for answers not sent as raw bytes
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "INT16": "int_contents",
    "INT8": "int_contents",
    "UINT64": "uint64_contents",
    "UINT32": "uint_contents",
}

# (message, [(field, number, type, label, message type or None)]), nested as "Outer.Inner"
_STRING, _INT64, _BYTES, _MESSAGE = 9, 3, 12, 11
_BOOL, _INT32, _UINT32, _UINT64, _FLOAT, _DOUBLE = 8, 5, 13, 4, 2, 1
_OPTIONAL, _REPEATED = 1, 3
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str | None]]]] = [
    (
        "InferTensorContents",
        [
            ("bool_contents", 1, _BOOL, _REPEATED, None),
            ("int_contents", 2, _INT32, _REPEATED, None),
            ("int64_contents", 3, _INT64, _REPEATED, None),
            ("uint_contents", 4, _UINT32, _REPEATED, None),
            ("uint64_contents", 5, _UINT64, _REPEATED, None),
            ("fp32_contents", 6, _FLOAT, _REPEATED, None),
            ("fp64_contents", 7, _DOUBLE, _REPEATED, None),
            ("bytes_contents", 8, _BYTES, _REPEATED, None),
        ],
    ),
    (
        "ModelMetadataRequest",
        [("name", 1, _STRING, _OPTIONAL, None), ("version", 2, _STRING, _OPTIONAL, None)],
    ),
    (
        "ModelMetadataResponse.TensorMetadata",
        [
            ("name", 1, _STRING, _OPTIONAL, None),
            ("datatype", 2, _STRING, _OPTIONAL, None),
            ("shape", 3, _INT64, _REPEATED, None),
        ],
    ),
    (
        "ModelMetadataResponse",
        [
            ("name", 1, _STRING, _OPTIONAL, None),
            ("versions", 2, _STRING, _REPEATED, None),
            ("platform", 3, _STRING, _OPTIONAL, None),
            ("inputs", 4, _MESSAGE, _REPEATED, "ModelMetadataResponse.TensorMetadata"),
            ("outputs", 5, _MESSAGE, _REPEATED, "ModelMetadataResponse.TensorMetadata"),
        ],
    ),
    (
        "ModelInferRequest.InferInputTensor",
        [
            ("name", 1, _STRING, _OPTIONAL, None),
            ("datatype", 2, _STRING, _OPTIONAL, None),
            ("shape", 3, _INT64, _REPEATED, None),
            ("contents", 5, _MESSAGE, _OPTIONAL, "InferTensorContents"),
        ],
    ),
    (
        "ModelInferRequest.InferRequestedOutputTensor",
        [("name", 1, _STRING, _OPTIONAL, None)],
    ),
    (
        "ModelInferRequest",
        [
            ("model_name", 1, _STRING, _OPTIONAL, None),
            ("model_version", 2, _STRING, _OPTIONAL, None),
            ("id", 3, _STRING, _OPTIONAL, None),
            ("inputs", 5, _MESSAGE, _REPEATED, "ModelInferRequest.InferInputTensor"),
            ("outputs", 6, _MESSAGE, _REPEATED, "ModelInferRequest.InferRequestedOutputTensor"),
            ("raw_input_contents", 7, _BYTES, _REPEATED, None),
        ],
    ),
    (
        "ModelInferResponse.InferOutputTensor",
        [
            ("name", 1, _STRING, _OPTIONAL, None),
            ("datatype", 2, _STRING, _OPTIONAL, None),
            ("shape", 3, _INT64, _REPEATED, None),
            ("contents", 5, _MESSAGE, _OPTIONAL, "InferTensorContents"),
        ],
    ),
    (
        "ModelInferResponse",
        [
            ("model_name", 1, _STRING, _OPTIONAL, None),
            ("model_version", 2, _STRING, _OPTIONAL, None),
            ("id", 3, _STRING, _OPTIONAL, None),
            ("outputs", 5, _MESSAGE, _REPEATED, "ModelInferResponse.InferOutputTensor"),
            ("raw_output_contents", 6, _BYTES, _REPEATED, None),
        ],
    ),
]


@functools.cache
def messages() -> SimpleNamespace:
    """The message classes by their .proto names (``messages().ModelInferRequest``, ...;
    nested ones as ``ModelInferRequest.InferInputTensor`` attributes of their outer class)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(
        name="tracemark/kserve_v2_subset.proto", package="inference", syntax="proto3"
    )
    declared: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full, fields in _MESSAGES:
        outer, _, inner = full.partition(".")
        if outer not in declared:
            declared[outer] = file.message_type.add(name=outer)
        msg = declared[outer].nested_type.add(name=inner) if inner else declared[outer]
        for name, number, kind, label, type_name in fields:
            field = msg.field.add(name=name, number=number, type=kind, label=label)
            if type_name is not None:
                field.type_name = f".inference.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    classes = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name, _ in _MESSAGES
        if "." not in name
    }
    return SimpleNamespace(**classes)


def reply_outputs(raw: bytes) -> list[dict[str, Any]]:
    """A serialised ModelInferResponse's outputs as v2 output objects (name, datatype,
    shape, and their values as an array), read from ``raw_output_contents`` by their
    declared datatype, or from typed ``contents``. Raises BinaryBodyError if malformed."""
    from google.protobuf.message import DecodeError

    try:
        reply = messages().ModelInferResponse.FromString(raw)
    except DecodeError as exc:
        raise BinaryBodyError(f"the reply is not a ModelInferResponse ({exc})") from None
    specs = [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in reply.outputs
    ]
    if not specs:
        raise BinaryBodyError("a v2 answer needs a non-empty 'outputs' list")
    contents = list(reply.raw_output_contents)
    if contents:
        if len(contents) != len(specs):
            raise BinaryBodyError(
                f"the answer has {len(specs)} outputs but {len(contents)} raw output contents"
            )
        for spec, data in zip(specs, contents, strict=True):
            spec["parameters"] = {"binary_data_size": len(data)}
        return read_tensors(specs, b"".join(contents), "outputs")
    for spec, tensor in zip(specs, reply.outputs, strict=True):
        field = _CONTENTS.get(spec["datatype"])
        if field is None:
            raise BinaryBodyError(
                f"output {spec['name']!r} has datatype {spec['datatype']!r} and no raw bytes"
            )
        spec["data"] = np.asarray(getattr(tensor.contents, field))
    return specs
