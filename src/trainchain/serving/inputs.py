"""Request bodies to model inputs: EEG epochs from JSON or ``.npy``, images with Pillow.

Pure functions of the body's bytes: every way a body can be wrong becomes a
:class:`RequestError` whose message says what was received and what was expected.
Nothing here knows about Flask.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from trainchain.core.errors import TrainchainError
from trainchain.families.cnn import Preprocessing, image_pixels

FloatArray = npt.NDArray[np.float64]
_NUMERIC_KINDS = "iuf"
_NPZ_MAGIC = b"PK\x03\x04"


class RequestError(TrainchainError):
    """A request the service refuses: an HTTP status, a message, and details for the client."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status, **self.details}


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _expected(shape: tuple[int, int]) -> str:
    return f"(N, {shape[0]}, {shape[1]}) or one epoch {_shape_text(shape)}"


# --------------------------------------------------------------------------- epochs


def check_shape(dims: tuple[int, ...], shape: tuple[int, int], max_epochs: int) -> int:
    """The number of epochs N in an array of shape ``dims``, or a :class:`RequestError`.

    ``(N, channels, samples)`` with 1 <= N <= ``max_epochs``, or one epoch
    ``(channels, samples)`` (N=1).
    """
    details = {"received_shape": list(dims), "expected_shape": ["N", *shape]}
    if len(dims) == 2 and tuple(dims) == shape:
        return 1
    if len(dims) != 3 or tuple(dims[1:]) != shape:
        raise RequestError(
            400,
            f"wrong shape: received an array of shape {_shape_text(dims)}, expected "
            f"{_expected(shape)} (epochs x channels x samples)",
            **details,
        )
    n = dims[0]
    if n < 1:
        raise RequestError(400, "no epochs: received 0, expected at least 1", **details)
    if n > max_epochs:
        raise RequestError(
            413,
            f"too many epochs: received {n}, at most {max_epochs} per request; split the batch",
            **details,
            max_epochs=max_epochs,
        )
    return int(n)


def check_epochs(array: npt.NDArray[Any], shape: tuple[int, int], max_epochs: int) -> FloatArray:
    """A numeric array as ``(N, channels, samples)`` float64 with finite values only, or a
    :class:`RequestError` (see :func:`check_shape`)."""
    n = check_shape(tuple(array.shape), shape, max_epochs)
    try:
        out = np.asarray(array, dtype=np.float64).reshape(n, *shape)
    except (OverflowError, ValueError, TypeError) as err:
        raise RequestError(400, f"the values are not numbers in float64's range: {err}") from None
    finite = np.isfinite(out)
    if not finite.all():
        bad = np.argwhere(~finite)
        epoch, channel, sample = (int(i) for i in bad[0])
        raise RequestError(
            400,
            f"non-finite values: {len(bad)} NaN or infinite value(s), the first at epoch {epoch}, "
            f"channel {channel}, sample {sample} ({out[epoch, channel, sample]}); expected finite "
            "numbers",
            count=len(bad),
            first=[epoch, channel, sample],
        )
    return out


def _leaves(node: Any, path: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], Any]]:
    if isinstance(node, list):
        for i, child in enumerate(node):
            yield from _leaves(child, (*path, i))
    else:
        yield path, node


def _where(path: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in path) or "the top level"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, str):
        return f"a string ({json.dumps(value[:40])})"
    if isinstance(value, int) and abs(value) > np.finfo(np.float64).max:
        return f"an integer out of float64's range ({str(value)[:20]}...)"
    kinds = {type(None): "null", dict: "an object", list: "an array"}
    return kinds.get(type(value), "a number")


def _not_a_number(data: list[Any]) -> RequestError | None:
    """The first leaf that is not a JSON number (booleans are not numbers here)."""
    for path, value in _leaves(data, ()):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and isinstance(value, int) and abs(value) > np.finfo(np.float64).max:
            ok = False
        if not ok:
            return RequestError(
                400,
                f"wrong type at {_where(path)}: received {_json_type(value)}, expected a number",
                at=list(path),
            )
    return None


def _ragged(data: list[Any]) -> RequestError:
    """Describe why nested lists do not form one rectangular array."""
    level: list[tuple[tuple[int, ...], Any]] = [((), data)]
    while level:
        first_path, first = level[0]
        for path, node in level:
            if isinstance(node, list) != isinstance(first, list):
                kinds = (
                    ("an array", "a number")
                    if isinstance(first, list)
                    else ("a number", "an array")
                )
                return RequestError(
                    400,
                    f"arrays nested unevenly: {_where(first_path)} is {kinds[0]} but "
                    f"{_where(path)} is {kinds[1]}; expected epochs x channels x samples",
                    at=list(path),
                )
            if isinstance(node, list) and len(node) != len(first):
                return RequestError(
                    400,
                    f"ragged arrays: {_where(path)} has {len(node)} items but "
                    f"{_where(first_path)} has {len(first)}; every epoch needs the same "
                    "channels and every channel the same samples",
                    at=list(path),
                )
        level = [
            ((*path, i), child)
            for path, node in level
            if isinstance(node, list)
            for i, child in enumerate(node)
        ]
    return RequestError(400, "the arrays do not form one rectangular array")


def _no_constants(name: str) -> Any:
    raise RequestError(
        400,
        f"non-finite values: the body holds {name}; expected finite numbers (JSON has no NaN "
        "or Infinity)",
    )


def _slow_json(body: bytes) -> Any:
    """The body as the standard library parses it: the bodies orjson refuses (invalid JSON,
    NaN, huge integers, UTF-16 or a byte order mark) get the same answer and messages as
    before orjson."""
    try:
        return json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise RequestError(400, "the JSON is nested too deeply: expected 2 or 3 levels") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, f"the body is not valid JSON: {err}") from None


def epochs_from_json(body: bytes, shape: tuple[int, int], max_epochs: int) -> FloatArray:
    """A JSON array of epochs (or one epoch) as ``(N, channels, samples)`` float64."""
    if not body.strip():
        raise RequestError(400, f"empty body: expected a JSON array of shape {_expected(shape)}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _slow_json(body)  # the standard parser says what was wrong, or reads UTF-16
    if not isinstance(data, list):
        raise RequestError(
            400,
            f"wrong type: received {_json_type(data)}, expected a JSON array of shape "
            f"{_expected(shape)}",
        )
    if not data:
        raise RequestError(400, f"empty array: expected at least one epoch, {_expected(shape)}")
    depth, node = 0, data
    while isinstance(node, list) and node and depth <= 3:
        node, depth = node[0], depth + 1
    if depth > 3:
        raise RequestError(
            400, f"arrays nested too deeply: more than 3 levels, expected {_expected(shape)}"
        )
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise _ragged(data) from None
    if array.dtype.kind not in _NUMERIC_KINDS or b"true" in body or b"false" in body:
        # a numeric array from JSON holds no strings, so these words are JSON booleans
        problem = _not_a_number(data)
        if problem is not None:
            raise problem
    return check_epochs(array, shape, max_epochs)


def _npy_header(buffer: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    from numpy.lib import format as npy

    version = npy.read_magic(buffer)
    if version == (1, 0):
        return npy.read_array_header_1_0(buffer)
    if version == (2, 0):
        return npy.read_array_header_2_0(buffer)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (1.0, 2.0)")


def epochs_from_npy(body: bytes, shape: tuple[int, int], max_epochs: int) -> FloatArray:
    """A NumPy ``.npy`` array (``np.save``, no pickles) as ``(N, channels, samples)`` float64.

    The header is checked before any data is read: a numeric dtype, the expected shape
    and a body exactly as long as the header says.
    """
    if not body:
        raise RequestError(400, f"empty body: expected a .npy array of shape {_expected(shape)}")
    if body.startswith(_NPZ_MAGIC):
        raise RequestError(
            400, "received an .npz archive: expected one array as .npy (np.save, not np.savez)"
        )
    buffer = io.BytesIO(body)
    try:
        dims, fortran, dtype = _npy_header(buffer)
    except Exception as err:
        raise RequestError(
            400, f"the body is not a readable .npy file: {err}; expected the bytes np.save writes"
        ) from None
    if dtype.hasobject or dtype.names is not None or dtype.kind not in _NUMERIC_KINDS:
        raise RequestError(
            400,
            f"wrong type: received a .npy of dtype {dtype}, expected numbers (float or int)",
            received_dtype=str(dtype),
        )
    n = check_shape(dims, shape, max_epochs)
    count = n * shape[0] * shape[1]
    need = count * dtype.itemsize
    have = len(body) - buffer.tell()
    if have != need:
        raise RequestError(
            400,
            f"the .npy is {'truncated' if have < need else 'too long'}: its header says "
            f"{_shape_text(dims)} {dtype} ({need} bytes of data), the body holds {have}",
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=buffer.tell())
    return check_epochs(flat.reshape(dims, order="F" if fortran else "C"), shape, max_epochs)


def parse_epochs(body: bytes, mimetype: str, shape: tuple[int, int], max_epochs: int) -> FloatArray:
    """The /classify body by its content type: JSON or .npy."""
    if mimetype == "application/json":
        return epochs_from_json(body, shape, max_epochs)
    return epochs_from_npy(body, shape, max_epochs)


# --------------------------------------------------------------------------- feedback

FEEDBACK_FIELDS = ("request_id", "labels")


def feedback_from_json(body: bytes) -> dict[str, Any]:
    """The /feedback body: a JSON object with exactly ``request_id`` and ``labels`` (their
    values are checked against the capture)."""
    expected = 'expected a JSON object {"request_id": "...", "labels": ["left", ...]}'
    if not body.strip():
        raise RequestError(400, f"empty body: {expected}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _slow_json(body)
    if not isinstance(data, dict):
        raise RequestError(400, f"wrong type: received {_json_type(data)}, {expected}")
    missing = [k for k in FEEDBACK_FIELDS if k not in data]
    unknown = sorted(set(data) - set(FEEDBACK_FIELDS))
    if missing or unknown:
        raise RequestError(
            400,
            f"missing {missing} and unknown {unknown[:10]} field(s): {expected}",
            missing=missing,
            unknown=unknown[:10],
        )
    return data


# --------------------------------------------------------------------------- images


def decode_image(data: bytes, preprocessing: Preprocessing, max_pixels: int) -> npt.NDArray[Any]:
    """Image bytes as the model's input ``(1, height, width, channels)`` uint8.

    Pillow decodes; :func:`trainchain.families.cnn.image_pixels` converts and resizes, as
    training read the model's images, with the preprocessing recorded in the MLmodel. The
    pixel count is checked from the header, before decoding (decompression bombs).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(400, "empty body: expected an image (PNG, JPEG, ...)")
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(413, f"the image is too large to decode: {err}") from None
    except UnidentifiedImageError:
        raise RequestError(
            400,
            f"unreadable image: Pillow does not recognise these {len(data)} bytes as an image; "
            "expected PNG, JPEG, GIF, BMP or another format Pillow reads",
        ) from None
    except Exception as err:
        raise RequestError(400, f"unreadable image: {type(err).__name__}: {err}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"the image is too large: {width} x {height} = {width * height} pixels, at most "
            f"{max_pixels}",
            max_pixels=max_pixels,
        )
    try:
        pixels: npt.NDArray[Any] = image_pixels(
            image, preprocessing.image_size, preprocessing.color_mode, preprocessing.interpolation
        )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(413, f"the image is too large to decode: {err}") from None
    except Exception as err:  # Pillow raises many types for corrupt data
        raise RequestError(
            400, f"unreadable image ({image.format} {width}x{height}): {type(err).__name__}: {err}"
        ) from None
    return pixels[np.newaxis]


def image_from_upload(files: Mapping[str, Any]) -> bytes:
    """The uploaded file of a multipart form: field ``image``, else the first file."""
    upload = files.get("image")
    if upload is None:
        upload = next(iter(files.values()), None)
    if upload is None:
        raise RequestError(
            400,
            "the multipart form holds no file: expected the image in a file field named 'image' "
            "(curl -F image=@cat.png)",
        )
    return bytes(upload.read())


# --------------------------------------------------------------------------- too large

# a float64 of EEG in volts as json.dumps and orjson write it, with its separator:
# "-1.9300000190734863e-05, " (the 413 for a JSON body estimates from the body itself)
JSON_VALUE_BYTES = 24.0
SAMPLE_BYTES = 64 * 1024  # what the 413 reads of a body over the limit to judge it
_NPY_HEADER = 128  # np.save's header for a 3-D array (format 1.0, padded to 64 bytes)


def value_size(sample: bytes, mimetype: str) -> float:
    """Bytes per value in an epochs body that begins with ``sample``: the item size its
    .npy header declares (8, float64's, when the header cannot be read); for JSON, the
    sample's bytes per number, counted by its separators (JSON_VALUE_BYTES for a sample
    with too few to tell)."""
    if mimetype == "application/x-npy":
        try:
            return float(_npy_header(io.BytesIO(sample))[2].itemsize)
        except Exception:  # numpy's header parser raises several kinds; an estimate only
            return 8.0
    separators = sample.count(b",")
    return len(sample) / separators if separators >= 100 else JSON_VALUE_BYTES


def _fit(max_body: int, epoch_bytes: float, max_epochs: int, header: int) -> int:
    """How many epochs of ``epoch_bytes`` fit in ``max_body`` (at most ``max_epochs``)."""
    return max(0, min(max_epochs, int((max_body - header) // epoch_bytes)))


def too_large_advice(
    max_body: int,
    mimetype: str,
    shape: tuple[int, int] | None,
    max_epochs: int,
    value_bytes: float,
) -> tuple[str, dict[str, Any]]:
    """What the 413 for an epochs body over ``max_body`` says to do, and the details it adds.
    JSON: send .npy (so many times smaller, from ``value_bytes``, the body's own bytes per
    value) or split the batch; .npy: split it, or send float32. With the served epoch's
    ``shape`` it says how many epochs fit in one request."""
    from trainchain.core.sizes import rounded_size

    npy = mimetype == "application/x-npy"
    ratios = (f"about {value_bytes / size:.0f}x smaller as float{8 * size}" for size in (8, 4))
    as_float32 = "send float32 (x.astype(np.float32)), half the bytes of float64"
    if shape is None:
        if npy:
            other = f", or {as_float32}" if value_bytes > 4 else ""
        else:
            other = ", or send the epochs as application/x-npy (np.save): " + ", ".join(ratios)
        return f"split the batch into smaller requests{other}", {}
    values = shape[0] * shape[1]
    fit = _fit(max_body, value_bytes * values, max_epochs, _NPY_HEADER if npy else 0)
    f64, f32 = (_fit(max_body, size * values, max_epochs, _NPY_HEADER) for size in (8, 4))
    if not f32:
        return (
            f"not one {shape[0]} x {shape[1]} epoch fits in a request, even as float32 .npy: "
            "the service's --max-body must grow",
            {"max_epochs_per_request": 0},
        )
    encoding = f".npy of {value_bytes:.0f}-byte values" if npy else "JSON"
    size = ("" if npy else "about ") + rounded_size(value_bytes * values)
    text = f"as {encoding} a {shape[0]} x {shape[1]} epoch takes {size}; " + (
        f"split the batch into requests of at most {fit} epochs, or "
        if fit
        else "not one fits in a request: "
    )
    if not npy:
        f64_text, f32_text = ratios
        text += (
            f"send the epochs as application/x-npy (np.save): {f64_text} (at most {f64} "
            f"epochs per request), {f32_text} (at most {f32})"
        )
    elif value_bytes > 4:
        text += f"{as_float32} (at most {f32} epochs per request)"
    return text.removesuffix(", or "), {"max_epochs_per_request": fit}
