"""dlib's serialization primitives (dlib/serialize.h, dlib/float_details.h): `ByteReader` decodes them and checks
what it reads, `DlibFormatError` names the file, offset and expectation; the encoders write the same bytes (for
tests and fixtures); `read_model_bytes` reads a model file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...errors import ModelError


class DlibFormatError(ModelError, ValueError):
    """A model file is not what it claims to be: names the file, the offset and the expectation."""

    def __init__(self, path: str, offset: int, expected: str, found: str = "") -> None:
        self.path, self.offset, self.expected, self.found = path, offset, expected, found
        message = f"{path}: at byte {offset}: expected {expected}"
        if found:
            message += f", found {found}"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Primitive decoding (dlib/serialize.h, dlib/float_details.h)
# ---------------------------------------------------------------------------------------------

_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
_COMPILED_RUN = 64  # float runs at least this long are decoded by a compiled loop (engines/dlib_floats.py)


class ByteReader:
    """A cursor over a model file's bytes that decodes dlib's primitive encodings."""

    def __init__(self, data: bytes, path: str = "<bytes>") -> None:
        self.data = memoryview(data)
        self.path = path
        self.offset = 0

    def fail(self, expected: str, found: str = "", offset: int | None = None) -> DlibFormatError:
        return DlibFormatError(self.path, self.offset if offset is None else offset, expected, found)

    def at_end(self) -> bool:
        return self.offset >= len(self.data)

    def raw(self, count: int, what: str) -> memoryview:
        end = self.offset + count
        if count < 0 or end > len(self.data):
            raise self.fail(f"{count} bytes of {what}", f"only {len(self.data) - self.offset} left (truncated file)")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def int(self, what: str = "an integer") -> int:
        """dlib's pack_int: control byte (sign 0x80, length 0x0F), then |value| little-endian."""
        start = self.offset
        if start >= len(self.data):
            raise self.fail(what, "end of file (truncated file)")
        control = self.data[start]
        size = control & 0x0F
        if control & 0x70 or size == 0 or size > 8:
            raise self.fail(what, f"byte 0x{control:02x}, which does not start a dlib integer")
        if start + 1 + size > len(self.data):
            raise self.fail(what, "end of file (truncated file)")
        value = int.from_bytes(self.data[start + 1 : start + 1 + size], "little")
        self.offset = start + 1 + size
        return -value if control & 0x80 else value

    def uint(self, what: str = "an unsigned integer") -> int:
        start = self.offset
        value = self.int(what)
        if value < 0:
            raise self.fail(what, f"the negative value {value}", offset=start)
        return value

    def expect_int(self, expected: int, what: str) -> None:
        start = self.offset
        value = self.int(what)
        if value != expected:
            raise self.fail(f"{what} = {expected}", str(value), offset=start)

    def bool(self, what: str = "a bool") -> bool:
        byte = bytes(self.raw(1, what))
        if byte not in (b"0", b"1"):
            raise self.fail(what + " ('0' or '1')", repr(byte), offset=self.offset - 1)
        return byte == b"1"

    def float(self, what: str = "a float") -> float:
        """float_details: integer mantissa, then integer exponent; value = mantissa * 2**exponent."""
        start = self.offset
        if start < len(self.data) and self.data[start] & 0x70:
            raise self.fail(what, "a legacy ASCII float, which these models never use")
        mantissa = self.int(what + " (mantissa)")
        exponent = self.int(what + " (exponent)")
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        try:
            return math.ldexp(float(mantissa), exponent)
        except OverflowError:
            raise self.fail(what, f"mantissa {mantissa} * 2**{exponent}, out of range", offset=start) from None

    def floats(self, count: int, what: str) -> np.ndarray:
        if count < _COMPILED_RUN:
            return np.array([self.float(what) for _ in range(count)], dtype=np.float64)
        from ..dlib_floats import decode_floats  # numba: only for long runs (shape predictors' leaves)

        out = np.empty(count, dtype=np.float64)
        data = np.frombuffer(self.data, dtype=np.uint8)
        done = 0
        while done < count:
            decoded, self.offset = decode_floats(data, self.offset, out[done:])
            done += decoded
            if done < count:  # a value the loop leaves to Python: decoded here, or the error named
                out[done] = self.float(what)
                done += 1
        return out

    def string(self, what: str = "a string") -> str:
        start = self.offset
        length = self.int(what + " (length)")
        if length < 0 or length > 256:
            raise self.fail(what, f"a length of {length}", offset=start)
        raw = bytes(self.raw(length, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(what, f"non-text bytes {raw[:16]!r}", offset=start) from None

    def expect_string(self, allowed: tuple[str, ...], what: str) -> str:
        start = self.offset
        try:
            value = self.string(what)
        except DlibFormatError as error:
            raise self.fail(f"{what} ({' or '.join(map(repr, allowed))})", error.found, offset=start) from None
        if value not in allowed:
            raise self.fail(f"{what} ({' or '.join(map(repr, allowed))})", repr(value), offset=start)
        return value

    def tensor(self, what: str = "a tensor") -> np.ndarray:
        """resizable_tensor: version 2, n, k, nr, nc, then raw little-endian float32 in NCHW order."""
        self.expect_int(2, what + " version")
        shape = tuple(self.uint(what + " dimension") for _ in range(4))
        count = int(np.prod(shape, dtype=np.int64))
        if count * 4 > len(self.data) - self.offset:
            raise self.fail(f"{count} float32 values of {what} {shape}", "a shorter file (truncated file)")
        values = np.frombuffer(self.raw(count * 4, what), dtype="<f4").reshape(shape)
        return values.astype(np.float32)

    def alias(self, what: str = "an alias_tensor") -> tuple[int, int, int, int]:
        self.expect_int(1, what + " version")
        return tuple(self.uint(what + " dimension") for _ in range(4))  # type: ignore[return-value]

    def expect_count(self, expected: int, what: str) -> int:
        start = self.offset
        count = self.uint(f"number of {what}")
        if count != expected:
            raise self.fail(f"{expected} {what}", str(count), offset=start)
        return count

    def float_matrix_column(self, what: str) -> np.ndarray:
        """dlib::matrix<float,0,1>: -nr, -nc (=-1), then nr floats."""
        start = self.offset
        rows, cols = abs(self.int(what + " rows")), abs(self.int(what + " columns"))
        if cols != 1:
            raise self.fail(f"{what} as a column vector", f"{rows}x{cols} matrix", offset=start)
        return self.floats(rows, what)



def read_model_bytes(path: str | Path, what: str = "a dlib model") -> bytes:
    """A model file's bytes; a missing, unreadable or empty file is a DlibFormatError at offset 0."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DlibFormatError(str(path), 0, "a readable model file", error.strerror or str(error)) from None
    if not data:
        raise DlibFormatError(str(path), 0, what, "an empty file")
    return data


def float_details_bytes(value: float, digits: int = 24) -> bytes:
    """Encode a float as dlib does (for tests and fixtures): mantissa, then exponent, trailing zero bytes shifted."""
    if math.isnan(value):
        return _pack_int(0) + _pack_int(32002)
    if math.isinf(value):
        return _pack_int(0) + _pack_int(32000 if value > 0 else 32001)
    fraction, exponent = math.frexp(value)
    mantissa = int(fraction * (1 << digits))
    exponent -= digits
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return _pack_int(mantissa) + _pack_int(exponent)


def _pack_int(value: int) -> bytes:
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


pack_int = _pack_int
