"""Runs of dlib ``float_details`` values decoded in one compiled loop.

A shape predictor stores every leaf value as two ``pack_int``s (mantissa, exponent): the 68-point model holds
~16 million of them, ~40 s to decode one by one in Python. This loop decodes the ordinary ones; it stops at
anything unusual (a malformed byte, a mantissa of 8 bytes with its top bit set, an exponent that overflows) and
leaves that value to :class:`facestream.engines.dlib_format.ByteReader`, which decodes it or names the error.
"""

from __future__ import annotations

import math

import numpy as np

from facestream.engines.jit import compiled

SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


@compiled()
def _pack_int(data, offset):  # pragma: no cover - compiled
    """(value, next offset, ok) of the pack_int at `offset`; ok False where Python must look."""
    n = data.shape[0]
    if offset >= n:
        return 0, offset, False
    control = data[offset]
    size = control & 0x0F
    if control & 0x70 or size == 0 or size > 8 or offset + 1 + size > n:
        return 0, offset, False
    if size == 8 and data[offset + 8] & 0x80:  # beyond int64
        return 0, offset, False
    value = np.int64(0)
    for k in range(size):
        value |= np.int64(data[offset + 1 + k]) << np.int64(8 * k)
    if control & 0x80:
        value = -value
    return value, offset + 1 + size, True


@compiled()
def decode_floats(data, offset, out):  # pragma: no cover - compiled
    """Fill `out` with the float_details values from `offset`; returns (values decoded, offset after them).
    Stops early at a value it does not decode (see the module docstring)."""
    for i in range(out.shape[0]):
        start = offset
        if start >= data.shape[0] or data[start] & 0x70:
            return i, start
        mantissa, offset, ok = _pack_int(data, start)
        if not ok:
            return i, start
        exponent, offset, ok = _pack_int(data, offset)
        if not ok:
            return i, start
        if exponent == 32000:
            out[i] = np.inf
        elif exponent == 32001:
            out[i] = -np.inf
        elif exponent == 32002:
            out[i] = np.nan
        else:
            value = math.ldexp(float(mantissa), exponent)
            if math.isinf(value):  # overflow: Python names the error
                return i, start
            out[i] = value
    return out.shape[0], offset
