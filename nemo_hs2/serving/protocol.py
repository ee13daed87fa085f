"""Triton's KServe v2 tensors, as tritonclient.http sends them: JSON ``data`` or the binary tensor extension
(``Inference-Header-Content-Length``; BYTES as 4-byte little-endian length + bytes).

Nothing here trusts a declared shape: element counts are computed in Python integers, compared with
``max_elements`` and with the bytes actually sent, and only then is anything allocated.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

MODEL_VERSION = "1"
NP_OF = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64}
INTEGER = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")


class RequestError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP status (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def loads(raw: bytes, what: str):
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"{what} is not valid JSON ({e})") from None
    except RecursionError:
        raise RequestError(f"{what} is nested too deeply") from None


def split_infer_body(raw: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """(JSON header, binary tail) of an infer request body."""
    if header_length is None:
        return loads(raw, "the inference request header"), b""
    try:
        n = int(header_length)
    except ValueError:
        raise RequestError(f"bad Inference-Header-Content-Length {header_length!r}") from None
    if not 0 <= n <= len(raw):
        raise RequestError(f"Inference-Header-Content-Length {n} is outside the {len(raw)}-byte body")
    return loads(raw[:n], "the inference request header"), raw[n:]


def _decode_bytes_tensor(raw: bytes, count: int, name: str) -> list[bytes]:
    if count * 4 > len(raw):  # every element carries a 4-byte length: a shape lie is caught before decoding
        raise RequestError(f"input '{name}': {len(raw)} bytes cannot hold {count} BYTES elements")
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise RequestError(f"input '{name}': binary BYTES data ends early")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise RequestError(f"input '{name}': binary BYTES data ends early")
        items.append(raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise RequestError(f"input '{name}': {len(raw) - offset} bytes of binary data beyond its {count} elements")
    return items


def _flatten(data, limit: int, name: str):
    flat, stack = [], [data]
    while stack:  # iterative: a deeply nested body must not hit the recursion limit
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
            if len(flat) > limit:
                raise RequestError(f"input '{name}': more values than its shape declares")
    return flat


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _json_values(name: str, dtype: str, flat: list, count: int, shape) -> np.ndarray:
    if len(flat) != count:
        raise RequestError(f"input '{name}': {len(flat)} values for shape {shape}")
    if dtype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise RequestError(f"input '{name}': BYTES data must be strings")
        return _object_array([v.encode("utf-8", "surrogatepass") for v in flat])
    if dtype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise RequestError(f"input '{name}': BOOL data must be true/false")
        return np.asarray(flat, dtype=np.bool_)
    if dtype in INTEGER:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise RequestError(f"input '{name}': {dtype} data must be integers")
        try:
            return np.asarray(flat, dtype=NP_OF[dtype])
        except OverflowError:
            raise RequestError(f"input '{name}': a value does not fit {dtype}") from None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise RequestError(f"input '{name}': {dtype} data must be numbers")
    return np.asarray(flat, dtype=NP_OF[dtype])


def parse_kserve_request(header, binary: bytes = b"", max_elements: int = 1 << 22) -> tuple[
        dict[str, tuple[str, np.ndarray]], dict, str | None]:
    """Inputs (name -> (datatype, array); BYTES as an object array of bytes), requested outputs (name -> binary?;
    "*" for the default) and the request id."""
    if not isinstance(header, dict):
        raise RequestError("the request body must be a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of tensors")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("'parameters' must be an object")
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise RequestError(f"inputs[{i}] must be an object with name, shape, datatype")
        name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise RequestError(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in arrays:
            raise RequestError(f"input '{name}' is given twice")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise RequestError(f"input '{name}': 'shape' must be a list of at most 8 non-negative integers")
        if dtype != "BYTES" and dtype not in NP_OF:
            raise RequestError(f"input '{name}': unsupported datatype {dtype!r}")
        count = 1
        for d in shape:  # Python integers: a declared [1e10, 1e10] neither overflows nor allocates
            count *= d
        if count > max_elements:
            raise RequestError(f"input '{name}': shape {shape} declares {count} elements, over the limit of "
                               f"{max_elements} (server.max_tensor_elements)", 413)
        in_params = spec.get("parameters") or {}
        size = in_params.get("binary_data_size") if isinstance(in_params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise RequestError(f"input '{name}': binary_data_size {size!r} does not fit the binary data sent")
            raw = binary[offset:offset + size]
            offset += size
            if dtype == "BYTES":
                values = _object_array(_decode_bytes_tensor(raw, count, name))
            else:
                item = np.dtype(NP_OF[dtype]).newbyteorder("<")
                if size != count * item.itemsize:
                    raise RequestError(f"input '{name}': {size} bytes for {count} {dtype} elements")
                values = np.frombuffer(raw, dtype=item).astype(NP_OF[dtype])
        else:
            if "data" not in spec:
                raise RequestError(f"input '{name}': no 'data' and no binary_data_size")
            values = _json_values(name, dtype, _flatten(spec["data"], count, name), count, shape)
        arrays[name] = (dtype, values.reshape(shape))
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data beyond the inputs' binary_data_size")
    default_binary = bool(params.get("binary_data_output", False))
    requested: dict[str, bool] = {}
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise RequestError("'outputs' must be a list")
        for i, spec in enumerate(outputs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise RequestError(f"outputs[{i}] must be an object with a name")
            out_params = spec.get("parameters") or {}
            requested[spec["name"]] = bool(out_params.get("binary_data", default_binary)) \
                if isinstance(out_params, dict) else default_binary
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    requested["*"] = default_binary  # the format for every output when none is named
    return arrays, requested, request_id


def encode_kserve_response(model_name: str, tensors: Mapping[str, tuple[str, np.ndarray]],
                           requested: Mapping[str, bool], request_id: str | None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer response; ``tensors``: name -> (datatype, array)."""
    names = [n for n in requested if n != "*"] or list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise RequestError(f"unknown output(s) {unknown}; this model has {list(tensors)}")
    outputs, chunks = [], []
    for name in names:
        datatype, array = tensors[name]
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if requested.get(name, requested.get("*", False)):
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    body = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": outputs}
    if request_id is not None:
        body["id"] = request_id
    text = json.dumps(body).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return text + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                     "Inference-Header-Content-Length": str(len(text))}
