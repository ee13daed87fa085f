"""Triton's KServe v2 tensors, as tritonclient.http sends them: JSON ``data`` or the binary tensor extension
(``Inference-Header-Content-Length``; BYTES as 4-byte little-endian length + bytes).

Nothing here trusts a declared size. A JSON body's values are counted before it is parsed (``json_values``), so
the objects ``json.loads`` builds are bounded by ``max_json_values``, not by the body's bytes (``[{},{},...]``
is 3 bytes a value in JSON and 72 as Python objects). A tensor's element count is computed in Python integers from
its declared shape, compared with its per-input limit and with the bytes actually sent, and only then is anything
allocated.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping

import numpy as np

MODEL_VERSION = "1"
NP_OF = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64}
INTEGER = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
MAX_DIMS = 8
# A JSON string token, escapes included (the unrolled form: no backtracking per character).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_STRUCTURE = (b",", b":", b"[", b"{")


class RequestError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP status (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def json_values(raw, stop: int | None = None) -> int:
    """An upper bound on the values and object keys ``json.loads(raw)`` creates, counted without parsing: outside
    strings, every value but the first of a container follows a ',', every key precedes a ':', and a container adds
    at most one value beyond its commas. Allocates nothing that grows with ``raw``; stops early once over ``stop``."""
    n, pos = 1, 0
    for m in _STRING.finditer(raw):
        start, end = m.span()
        n += sum(raw.count(c, pos, start) for c in _STRUCTURE)
        pos = end
        if stop is not None and n > stop:
            return n
    return n + sum(raw.count(c, pos) for c in _STRUCTURE)


def loads(raw, what: str, max_values: int | None = None):
    if max_values is not None:
        n = json_values(raw, stop=max_values)
        if n > max_values:
            raise RequestError(f"{what} holds more than {max_values} JSON values, the limit "
                               "(server.max_json_values)", 413)
    try:  # UTF-8 only (RFC 8259): in UTF-16 a byte 0x22 need not be a quote, and the count above would not hold
        return json.loads(str(raw, "utf-8"))
    except RecursionError:
        raise RequestError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and int() of a number over 4300 digits
        raise RequestError(f"{what} is not valid JSON ({e})") from None


def split_infer_body(raw, header_length: str | None, max_values: int | None = None) -> tuple[dict, memoryview]:
    """(JSON header, binary tail) of an infer request body; the tail is a view, not a copy."""
    if header_length is None:
        return loads(raw, "the inference request header", max_values), memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise RequestError(f"bad Inference-Header-Content-Length {header_length!r}") from None
    if not 0 <= n <= len(raw):
        raise RequestError(f"Inference-Header-Content-Length {n} is outside the {len(raw)}-byte body")
    view = memoryview(raw)
    return loads(view[:n].tobytes(), "the inference request header", max_values), view[n:]


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
        items.append(bytes(raw[offset:offset + size]))
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
        bounds = np.iinfo(NP_OF[dtype])
        if flat and not (bounds.min <= min(flat) and max(flat) <= bounds.max):
            raise RequestError(f"input '{name}': a value does not fit {dtype}")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise RequestError(f"input '{name}': {dtype} data must be numbers")
    try:
        with np.errstate(over="raise"):
            return np.asarray(flat, dtype=NP_OF[dtype])
    except (OverflowError, FloatingPointError):  # 2**64 as INT64, 10**400 as FP32
        raise RequestError(f"input '{name}': a value does not fit {dtype}") from None


def _binary_values(name: str, dtype: str, raw, count: int) -> np.ndarray:
    if dtype == "BYTES":
        return _object_array(_decode_bytes_tensor(raw, count, name))
    item = np.dtype(NP_OF[dtype]).newbyteorder("<")
    if len(raw) != count * item.itemsize:
        raise RequestError(f"input '{name}': {len(raw)} bytes for {count} {dtype} elements")
    return np.frombuffer(raw, dtype=item).astype(NP_OF[dtype])  # a copy: the body can be freed


def _declared_count(name: str, shape, limit: int, setting: str) -> int:
    """The element count of a declared shape, each dimension checked on its own first: ``[0, 2**70]`` has zero
    elements but no array can have that shape."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"input '{name}': 'shape' must be a list of at most {MAX_DIMS} non-negative integers")
    count = 1
    for d in shape:  # Python integers: a declared [1e10, 1e10] neither overflows nor allocates
        if d > limit:
            raise RequestError(f"input '{name}': shape {shape} has a dimension of {d}, over the limit of {limit} "
                               f"elements ({setting})", 413)
        count *= d
    if count > limit:
        raise RequestError(f"input '{name}': shape {shape} declares {count} elements, over the limit of {limit} "
                           f"({setting})", 413)
    return count


def parse_kserve_request(header, binary=b"", max_elements: int = 1 << 22,
                         limits: Mapping[str, tuple[int, str]] | None = None) -> tuple[
        dict[str, tuple[str, np.ndarray]], dict, str | None]:
    """Inputs (name -> (datatype, array); BYTES as an object array of bytes), requested outputs (name -> binary?;
    "*" for the default) and the request id. ``limits``: the inputs a model takes, each with its own element limit
    and the setting that names it; any other input is refused before anything is decoded."""
    if not isinstance(header, dict):
        raise RequestError("the request body must be a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of tensors")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("'parameters' must be an object")
    names = []
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise RequestError(f"inputs[{i}] must be an object with name, shape, datatype")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise RequestError(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in names:
            raise RequestError(f"input '{name}' is given twice")
        names.append(name)
    unexpected = [n for n in names if limits is not None and n not in limits]
    if unexpected:
        raise RequestError(f"unexpected input(s) {sorted(unexpected)}; this model takes {sorted(limits)}")
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    offset = 0
    for name, spec in zip(names, inputs):
        shape, dtype = spec.get("shape"), spec.get("datatype")
        if dtype != "BYTES" and dtype not in NP_OF:
            raise RequestError(f"input '{name}': unsupported datatype {dtype!r}")
        limit, setting = limits[name] if limits is not None else (max_elements, "server.max_tensor_elements")
        count = _declared_count(name, shape, limit, setting)
        in_params = spec.get("parameters") or {}
        size = in_params.get("binary_data_size") if isinstance(in_params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise RequestError(f"input '{name}': binary_data_size {size!r} does not fit the binary data sent")
            values = _binary_values(name, dtype, binary[offset:offset + size], count)
            offset += size
        else:
            if "data" not in spec:
                raise RequestError(f"input '{name}': no 'data' and no binary_data_size")
            values = _json_values(name, dtype, _flatten(spec["data"], count, name), count, shape)
        arrays[name] = (dtype, values.reshape(shape))
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data beyond the inputs' binary_data_size")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    return arrays, _requested_outputs(header.get("outputs"), bool(params.get("binary_data_output", False))), \
        request_id


def _requested_outputs(outputs, default_binary: bool) -> dict[str, bool]:
    """name -> binary?, and "*": the format for every output when none is named."""
    requested: dict[str, bool] = {}
    if outputs is not None:
        if not isinstance(outputs, list):
            raise RequestError("'outputs' must be a list")
        for i, spec in enumerate(outputs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise RequestError(f"outputs[{i}] must be an object with a name")
            out_params = spec.get("parameters") or {}
            requested[spec["name"]] = bool(out_params.get("binary_data", default_binary)) \
                if isinstance(out_params, dict) else default_binary
    requested["*"] = default_binary
    return requested


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
