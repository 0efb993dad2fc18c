"""The dlib model reader: primitive encodings, the three real files, and clear errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facestream.engines import dlib_format as fmt
from facestream.engines.models import model_path


@pytest.mark.parametrize(
    ("encoded", "value"),
    [("0150", 80), ("022c01", 300), ("8101", -1), ("0102", 2), ("0100", 0)],
)
def test_integer_examples_from_the_spec(encoded: str, value: int) -> None:
    assert fmt.ByteReader(bytes.fromhex(encoded)).int() == value
    assert fmt.pack_int(value).hex() == encoded


@pytest.mark.parametrize(
    ("encoded", "value", "digits"),
    [("01808107", 1.0, 24), ("01108104", 1.0, 53), ("01108105", 0.5, 53), ("01000128", 0.0, 24),
     ("81808108", -0.5, 24), ("036290f58111", 16093282 * 2.0**-17, 24)],
)  # fmt: skip
def test_float_examples_from_the_spec(encoded: str, value: float, digits: int) -> None:
    assert fmt.ByteReader(bytes.fromhex(encoded)).float() == value
    assert fmt.float_details_bytes(value, digits).hex() == encoded


def test_special_floats_and_bools() -> None:
    reader = fmt.ByteReader(fmt.float_details_bytes(float("inf")) + fmt.float_details_bytes(float("nan")) + b"10")
    assert reader.float() == float("inf")
    assert np.isnan(reader.float())
    assert reader.bool() is True and reader.bool() is False


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
@settings(max_examples=200, deadline=None)
def test_integer_round_trip(value: int) -> None:
    assert fmt.ByteReader(fmt.pack_int(value)).int() == value


@given(st.floats(width=32, allow_nan=False))
@settings(max_examples=200, deadline=None)
def test_float_round_trip(value: float) -> None:
    assert fmt.ByteReader(fmt.float_details_bytes(value)).float() == value


def test_detector_file() -> None:
    net = fmt.read_mmod_detector(model_path("detector"))
    assert isinstance(net.loss, fmt.LossMMOD)
    assert net.loss.windows == (fmt.DetectorWindow(80, 80, ""),)
    assert net.loss.nms_iou_threshold == pytest.approx(0.3382761351109955, abs=0)
    assert net.input == fmt.InputImagePyramid((122.78199768066406, 117.0009994506836, 104.2979965209961), 10, 11)
    convs = [layer for layer in net.layers if isinstance(layer, fmt.Conv)]
    affines = [layer for layer in net.layers if isinstance(layer, fmt.Affine)]
    assert [c.weights.shape for c in convs][::-1] == [
        (16, 3, 5, 5),
        (32, 16, 5, 5),
        (32, 32, 5, 5),
        (45, 32, 5, 5),
        (45, 45, 5, 5),
        (45, 45, 5, 5),
        (1, 45, 9, 9),
    ]
    assert sum(c.weights.size + c.bias.size for c in convs) == 180_711
    assert {a.source for a in affines} == {"bn_con2"}


def test_embedder_file() -> None:
    net = fmt.read_face_embedder(model_path("embedder"))
    assert net.loss == fmt.LossMetric(np.float32(0.04), np.float32(0.6))
    assert net.input == fmt.InputImageSized((122.78199768066406, 117.0009994506836, 104.2979965209961), 150, 150)
    assert len(net.layers) == 130
    convs = [layer for layer in net.layers if isinstance(layer, fmt.Conv)]
    affines = [layer for layer in net.layers if isinstance(layer, fmt.Affine)]
    fc = net.layers[0]
    assert len(convs) == 29 and len(affines) == 29 and {a.source for a in affines} == {"affine_"}
    assert isinstance(fc, fmt.FullyConnected) and fc.weights.shape == (256, 128) and fc.bias is None
    assert sum(c.weights.size + c.bias.size for c in convs) == 5_574_720


def test_shape_predictor_file() -> None:
    sp = fmt.read_shape_predictor(model_path("landmarks"))
    assert sp.num_parts == 5
    assert sp.split_index1.shape == (15, 500, 15) and sp.leaf_values.shape == (15, 500, 16, 5, 2)
    assert sp.anchor_index.shape == (15, 800) and sp.deltas.shape == (15, 800, 2)
    np.testing.assert_allclose(sp.initial_shape[0], [0.776252, 0.345536], atol=1e-6)
    assert np.abs(sp.split_threshold).max() <= 64 and sp.anchor_index.max() <= 4


# ------------------------------------------------------------------------------------------
# Bad files: each gets a DlibFormatError naming the file, the byte offset and the expectation.
# ------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("reader", [fmt.read_mmod_detector, fmt.read_face_embedder, fmt.read_shape_predictor])
def test_empty_file(tmp_path: Path, reader) -> None:
    path = _write(tmp_path, "empty.dat", b"")
    with pytest.raises(fmt.DlibFormatError, match=r"empty\.dat: at byte 0: expected .*empty file"):
        reader(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(fmt.DlibFormatError, match=r"missing\.dat: at byte 0: expected a readable model file"):
        fmt.read_mmod_detector(tmp_path / "missing.dat")


@pytest.mark.parametrize("kind", ["detector", "embedder"])
@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.999])
def test_truncated_network(tmp_path: Path, kind: str, fraction: float) -> None:
    data = model_path(kind).read_bytes()
    cut = int(len(data) * fraction)
    path = _write(tmp_path, f"{kind}-cut.dat", data[:cut])
    reader = fmt.read_mmod_detector if kind == "detector" else fmt.read_face_embedder
    with pytest.raises(fmt.DlibFormatError) as info:
        reader(path)
    assert info.value.path == str(path)
    assert 0 < info.value.offset <= cut
    assert "truncated" in str(info.value)


def test_truncated_shape_predictor(tmp_path: Path) -> None:
    data = model_path("landmarks").read_bytes()
    path = _write(tmp_path, "sp-cut.dat", data[: len(data) // 50])  # parse stays quick
    with pytest.raises(fmt.DlibFormatError, match="truncated") as info:
        fmt.read_shape_predictor(path)
    assert info.value.offset <= len(data) // 50


def test_shape_predictor_given_as_network(tmp_path: Path) -> None:
    path = model_path("landmarks")
    with pytest.raises(fmt.DlibFormatError, match=r"at byte 2: expected the loss layer name"):
        fmt.read_face_embedder(path)


@pytest.mark.parametrize("kind", ["detector", "embedder"])
def test_network_given_as_shape_predictor(kind: str) -> None:
    with pytest.raises(fmt.DlibFormatError, match=r"at byte 2: expected a shape predictor"):
        fmt.read_shape_predictor(model_path(kind))


def test_detector_given_as_embedder_and_back() -> None:
    with pytest.raises(fmt.DlibFormatError, match="expected a face embedder"):
        fmt.read_face_embedder(model_path("detector"))
    with pytest.raises(fmt.DlibFormatError, match="expected an MMOD detector"):
        fmt.read_mmod_detector(model_path("embedder"))


def test_random_bytes(tmp_path: Path) -> None:
    noise = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for reader in (fmt.read_mmod_detector, fmt.read_face_embedder, fmt.read_shape_predictor):
        with pytest.raises(fmt.DlibFormatError, match=r"noise\.dat: at byte \d+: expected"):
            reader(_write(tmp_path, "noise.dat", noise))


def test_bzip2_file(tmp_path: Path) -> None:
    with pytest.raises(fmt.DlibFormatError, match="bzip2"):
        fmt.read_mmod_detector(_write(tmp_path, "model.dat.bz2", b"BZh91AY&SY" + bytes(100)))


def test_trailing_garbage(tmp_path: Path) -> None:
    data = model_path("detector").read_bytes()
    with pytest.raises(fmt.DlibFormatError, match="expected the end of the file"):
        fmt.read_mmod_detector(_write(tmp_path, "long.dat", data + b"\x00\x01"))


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_fuzz_reader_raises_only_format_errors(data: bytes) -> None:
    for parse in (fmt.parse_network, fmt.parse_shape_predictor):
        try:
            parse(data, "fuzz.dat")
        except fmt.DlibFormatError:
            pass


@given(st.integers(0, 729_939), st.integers(0, 255))
@settings(max_examples=60, deadline=None)
def test_fuzz_flipped_byte_in_detector(position: int, value: int) -> None:
    data = bytearray(_DETECTOR_BYTES())
    data[position] = value
    try:
        fmt.parse_network(bytes(data), "flipped.dat")
    except fmt.DlibFormatError:
        pass


def _DETECTOR_BYTES() -> bytes:  # noqa: N802 - a cached constant
    global _detector_bytes_cache
    if "_detector_bytes_cache" not in globals():
        _detector_bytes_cache = model_path("detector").read_bytes()
    return _detector_bytes_cache
