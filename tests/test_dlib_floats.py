"""engines/dlib_floats.py: long runs of dlib float_details values decoded by the compiled loop equal the
Python decoder value for value (the rule: ByteReader.float, one value at a time), and its errors are the same."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facestream.engines.dlib_format import ByteReader, DlibFormatError, float_details_bytes, pack_int

RUN = 300  # over the length from which ByteReader.floats uses the compiled loop


def one_by_one(data: bytes, count: int) -> np.ndarray:
    reader = ByteReader(data)
    return np.array([reader.float() for _ in range(count)])


def test_a_long_run_decodes_as_the_python_decoder_does_including_the_values_it_leaves_to_python() -> None:
    rng = np.random.default_rng(7)
    values = list(rng.standard_normal(RUN - 8) * 10.0 ** rng.integers(-30, 30, RUN - 8))
    values += [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-300, -3.5e300, 1.0]
    data = b"".join(float_details_bytes(v) for v in values)
    # a mantissa of 8 bytes with its top bit set (beyond int64, left to Python) and an exponent of 2 bytes
    data += pack_int(-(2**63 + 12345)) + pack_int(-1000) + pack_int(5) + pack_int(300)
    reader = ByteReader(data)
    decoded = reader.floats(RUN + 2, "test values")
    assert reader.at_end()
    np.testing.assert_array_equal(decoded, one_by_one(data, RUN + 2))
    assert decoded[-2] == math.ldexp(float(-(2**63 + 12345)), -1000) and decoded[-1] == math.ldexp(5.0, 300)


@pytest.mark.parametrize(
    "bad",
    [b"\x70\x01", b"\x03\x01", pack_int(1) + pack_int(2000), b"\x01"],
    ids=["legacy-ascii", "truncated", "overflow", "no-exponent"],
)
def test_errors_in_a_long_run_are_the_python_decoders(bad: bytes) -> None:
    data = float_details_bytes(1.5) * (RUN - 1) + bad
    with pytest.raises(DlibFormatError) as fast:
        ByteReader(data).floats(RUN, "test values")
    reader = ByteReader(data)
    with pytest.raises(DlibFormatError) as slow:
        [reader.float("test values") for _ in range(RUN)]
    assert str(fast.value) == str(slow.value)
