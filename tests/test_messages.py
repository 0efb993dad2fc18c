"""pipeline/runtime/messages.py: round trips of every message type, zero-copy, strict decoding, fuzzing,
real sockets."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facestream.engines.face_batch import FaceBatch
from facestream.engines.quality import QUALITY_COLUMNS
from facestream.pipeline.runtime import messages, stages
from facestream.pipeline.runtime.messages import (
    Control,
    DescriptorsMessage,
    EndOfStream,
    FacesMessage,
    FrameMessage,
    MessageError,
    decode,
    encode,
)

PREFIX = struct.Struct("<4sBBBxI")
ARRAY = struct.Struct("<BB4I")


def faces_message(count: int = 3, seed: int = 0, track_ids: bool = True, score_dtype=np.float64) -> FacesMessage:
    rng = np.random.default_rng(seed)
    return FacesMessage(
        stream_id="cam-1",
        frame_index=41,
        timestamp=1712.25,
        width=640,
        height=480,
        faces=FaceBatch(
            boxes=rng.integers(-20, 600, (count, 4)).astype(np.int64),
            scores=rng.random(count).astype(score_dtype),
            landmarks=rng.integers(0, 600, (count, 5, 2)).astype(np.int64),
            chips=rng.integers(0, 256, (count, 150, 150, 3), dtype=np.uint8),
            quality=rng.random((count, 2)).astype(np.float32),
            track_ids=np.arange(1, count + 1, dtype=np.int64) if track_ids else None,
        ),
    )


def descriptors_message(count: int = 2, track_ids: bool = False) -> DescriptorsMessage:
    faces = faces_message(count, seed=1, track_ids=track_ids)
    descriptors = np.random.default_rng(2).normal(size=(count, 128)).astype(np.float32)
    return DescriptorsMessage.from_faces(faces, descriptors)


def frame_message(height: int = 48, width: int = 64) -> FrameMessage:
    image = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return FrameMessage("file:clip.mp4", 7, 0.28, False, image)


def all_messages() -> list[messages.Message]:
    return [
        frame_message(),
        faces_message(3),
        faces_message(0),
        faces_message(2, track_ids=False, score_dtype=np.float32),
        replace(faces_message(1), new_scene=True, scanned=False),
        replace(frame_message(), new_scene=True),
        descriptors_message(2),
        descriptors_message(0, track_ids=True),
        EndOfStream("cam-1", 275),
        Control("stop"),
        Control("flush", stream_id="cam-2"),
    ]


def assert_same(received: messages.Message | FaceBatch, sent: messages.Message | FaceBatch) -> None:
    """Same type, same fields; arrays equal in dtype, shape and values; a FaceBatch column by column."""
    assert type(received) is type(sent)
    for name, value in vars(sent).items():
        got = getattr(received, name)
        if isinstance(value, FaceBatch):
            assert_same(got, value)
        elif isinstance(value, np.ndarray):
            assert isinstance(got, np.ndarray), name
            assert got.dtype == value.dtype and got.shape == value.shape, name
            np.testing.assert_array_equal(got, value, err_msg=name)
        else:
            assert got == value and type(got) is type(value), name


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(frame) for frame in frames]


def rebuild(frames: list, **changes) -> list[bytes]:
    """Frames of a valid message with parts of the header replaced (prefix fields, descriptors, metadata)."""
    frames = as_bytes(frames)
    header = frames[0]
    magic, version, kind, n_arrays, meta_len = PREFIX.unpack_from(header)
    descriptors = [list(ARRAY.unpack_from(header, PREFIX.size + i * ARRAY.size)) for i in range(n_arrays)]
    metadata = header[PREFIX.size + n_arrays * ARRAY.size :]
    for index, descriptor in changes.pop("descriptors", {}).items():
        descriptors[index] = descriptor
    metadata = changes.pop("metadata", metadata)
    magic = changes.pop("magic", magic)
    version = changes.pop("version", version)
    kind = changes.pop("kind", kind)
    n_arrays = changes.pop("n_arrays", n_arrays)
    meta_len = changes.pop("meta_len", len(metadata))
    assert not changes
    header = PREFIX.pack(magic, version, kind, n_arrays, meta_len)
    header += b"".join(ARRAY.pack(*descriptor) for descriptor in descriptors) + metadata
    return [header, *frames[1:]]


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("message", all_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(message: messages.Message) -> None:
    frames = encode(message)
    assert_same(decode(frames), message)
    assert_same(decode(as_bytes(frames)), message)


def test_header_layout_is_the_documented_one() -> None:
    frames = encode(faces_message(2))
    header = bytes(frames[0])
    magic, version, kind, n_arrays, meta_len = PREFIX.unpack_from(header)
    assert (magic, version, kind, n_arrays) == (b"FSTM", 3, messages.MessageType.FACES, 8)
    assert len(frames) == 1 + n_arrays
    assert len(header) == 12 + 8 * 18 + meta_len < 300  # small: the arrays travel in their own frames
    assert ARRAY.unpack_from(header, 12) == (2, 2, 2, 4, 0, 0)  # boxes: int64 (2,4)
    assert ARRAY.unpack_from(header, 12 + 3 * 18) == (1, 4, 2, 150, 150, 3)  # chips: uint8 (2,150,150,3)
    assert ARRAY.unpack_from(header, 12 + 5 * 18) == (1, 1, 2, 0, 0, 0)  # box_source: uint8 (2,)
    assert json.loads(header[12 + 8 * 18 :]) == {
        "stream_id": "cam-1", "frame_index": 41, "timestamp": 1712.25, "width": 640, "height": 480,
        "scanned": True, "new_scene": False,
    }  # fmt: skip


def test_no_faces_still_travels() -> None:
    message = faces_message(0)
    frames = encode(message)
    assert [len(memoryview(frame)) for frame in frames[1:]] == [0] * 8
    decoded = decode(frames)
    assert len(decoded) == 0 and decoded.faces.chips.shape == (0, 150, 150, 3) and decoded.faces.quality.shape == (0, 2)
    skip_notice = decode(encode(stages.empty_faces("cam-1", 3, 0.1, 640, 480)))
    assert len(skip_notice) == 0 and skip_notice.faces.quality.shape == (0, len(QUALITY_COLUMNS))


def test_faces_travel_as_one_face_batch() -> None:
    """Decoding gives the FaceBatch that was sent; the columns a type does not send decode empty."""
    faces = faces_message(2)
    decoded = decode(encode(faces))
    assert isinstance(decoded.faces, FaceBatch) and len(decoded.faces.descriptors) == 0
    assert_same(decoded.faces, faces.faces)
    descriptors = decode(encode(descriptors_message(2)))
    assert len(descriptors.faces.chips) == 0 and descriptors.faces.descriptors.shape == (2, 128)
    picked = descriptors.faces.take(np.array([1]))
    np.testing.assert_array_equal(picked.boxes, descriptors.faces.boxes[1:])
    assert len(picked.chips) == 0  # an empty column stays empty


def test_descriptors_from_faces_drops_chips_keeps_the_rest() -> None:
    faces = faces_message(2)
    descriptors = np.ones((2, 128), np.float32)
    message = DescriptorsMessage.from_faces(faces, descriptors)
    assert message.faces.boxes is faces.faces.boxes and message.faces.track_ids is faces.faces.track_ids
    assert len(message.faces.chips) == 0 and message.faces.descriptors is descriptors
    assert_same(decode(encode(message)), message)


def test_non_contiguous_and_castable_inputs() -> None:
    rng = np.random.default_rng(4)
    big_image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    wide_boxes = rng.integers(0, 500, (3, 8), dtype=np.int64)
    message = FacesMessage(
        stream_id="s", frame_index=np.int64(3), timestamp=np.float32(0.5), width=80, height=60, faces=FaceBatch(
            boxes=wide_boxes[:, ::2],  # strided
            scores=np.asfortranarray(rng.random((3, 2)))[:, 0],
            landmarks=np.asfortranarray(rng.integers(0, 80, (3, 5, 2))),
            chips=rng.integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)[:, :, :, ::-1],  # BGR view of RGB
            quality=rng.random((2, 3)).astype(np.float32).T,  # transposed
            track_ids=np.array([5, 6, 7], np.int32),  # widened to int64
        ),
    )  # fmt: skip
    decoded = decode(encode(message))
    for name in ("boxes", "scores", "landmarks", "chips", "quality", "track_ids"):
        np.testing.assert_array_equal(getattr(decoded.faces, name), getattr(message.faces, name), err_msg=name)
    assert decoded.faces.track_ids.dtype == np.int64 and decoded.frame_index == 3 and type(decoded.frame_index) is int
    image_view = FrameMessage("s", 0, 0.0, True, big_image[::2, ::2])
    np.testing.assert_array_equal(decode(encode(image_view)).image, big_image[::2, ::2])
    big_endian = faces_message(2)
    big_endian.faces.boxes = big_endian.faces.boxes.astype(">i8")
    np.testing.assert_array_equal(decode(encode(big_endian)).faces.boxes, big_endian.faces.boxes)


def test_zero_copy_both_ways() -> None:
    message = faces_message(2)
    frames = encode(message)
    chips_frame = frames[4]
    assert isinstance(chips_frame, memoryview)
    assert np.shares_memory(np.frombuffer(chips_frame, np.uint8), message.faces.chips)  # no copy when encoding
    received = as_bytes(frames)
    decoded = decode(received)
    assert np.shares_memory(decoded.faces.chips, np.frombuffer(received[4], np.uint8))  # no copy when decoding
    assert not decoded.faces.chips.flags.writeable  # a view onto the received frame
    forwarded = decode(encode(decoded))  # a stage can forward what it received
    assert_same(forwarded, message)


# ------------------------------------------------------------------------------------------------
# encoding refuses what the wire cannot carry


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"boxes": np.zeros((3, 4), np.float64)}, "dtype float64 cannot be sent"),
        ({"boxes": np.zeros((3, 5), np.int64)}, "does not match"),
        ({"scores": np.zeros(2)}, "earlier arrays 3"),
        ({"chips": np.zeros((3, 112, 112, 3), np.uint8)}, "does not match"),
        ({"quality": np.zeros((3, 2), np.float64)}, "cannot be sent as float32"),
        ({"quality": np.zeros((3, 65), np.float32)}, "outside [0, 64]"),
        ({"frame_index": -1}, "outside"),
        ({"frame_index": "3"}, "expected an integer"),
        ({"frame_index": True}, "expected an integer"),
        ({"timestamp": float("nan")}, "not a finite number"),
        ({"stream_id": ""}, "must not be empty"),
        ({"stream_id": "x" * 300}, "longer than 256"),
        ({"stream_id": "cam\ud800"}, "not valid Unicode"),
        ({"boxes": None}, "'boxes' is missing"),
    ],
)
def test_encode_refuses(change: dict, reason: str) -> None:
    message = faces_message(3)
    for name, value in change.items():
        setattr(message.faces if hasattr(message.faces, name) else message, name, value)
    with pytest.raises(MessageError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        encode(message)


def test_encode_refuses_other_objects_and_bad_commands() -> None:
    with pytest.raises(MessageError, match="cannot encode a dict"):
        encode({"stream_id": "x"})
    with pytest.raises(MessageError, match="not a command name"):
        encode(Control("Stop now"))
    with pytest.raises(MessageError, match="expected true or false"):
        encode(FrameMessage("s", 0, 0.0, 1, np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(MessageError, match="outside"):
        encode(FrameMessage("s", 0, 0.0, True, np.zeros((0, 2, 3), np.uint8)))


# ------------------------------------------------------------------------------------------------
# decoding: every way a message can be wrong gives MessageError with the reason


def test_decode_errors_name_the_reason() -> None:
    good = encode(faces_message(2))
    metadata = bytes(good[0])[12 + 8 * 18 :]
    valid_metadata = json.loads(metadata)
    cases = {
        "not a list": (b"FSTM", "expected a list of frames"),
        "no frames": ([], "no frames"),
        "short header": ([b"FSTM\x01"], "shorter than the 12-byte prefix"),
        "magic": (rebuild(good, magic=b"JPEG"), "wrong magic"),
        "version": (rebuild(good, version=1), "unsupported format version 1"),
        "type": (rebuild(good, kind=9), "unknown message type 9"),
        "array count": (rebuild(good, n_arrays=9), "declares 9 arrays"),
        "frame count": (as_bytes(good)[:-1], "has 8 frames, its header declares 9"),
        "extra frame": ([*as_bytes(good), b""], "has 10 frames"),
        "header length": (rebuild(good, meta_len=len(metadata) + 1), "lengths add up to"),
        "huge metadata": (rebuild(good, meta_len=1 << 30), "more than 4096"),
        "dtype code": (rebuild(good, descriptors={0: [9, 2, 2, 4, 0, 0]}), "unknown dtype code 9"),
        "dtype here": (rebuild(good, descriptors={0: [3, 2, 2, 4, 0, 0]}), "float32 is not allowed"),
        "ndim": (rebuild(good, descriptors={0: [2, 3, 2, 4, 1, 0]}), "expected 2 dimensions"),
        "stray dim": (rebuild(good, descriptors={0: [2, 2, 2, 4, 0, 7]}), "bad dimensions"),
        "shape": (rebuild(good, descriptors={0: [2, 2, 1, 8, 0, 0]}), "does not match"),
        "face count": (rebuild(good, descriptors={1: [4, 1, 3, 0, 0, 0]}), "earlier arrays 2"),
        "bytes": ([bytes(good[0]), b"x" * 63, *as_bytes(good)[2:]], r"frame is 63 bytes, int64 \(2, 4\) needs 64"),
        "json": (rebuild(good, metadata=b"{not json"), "not valid JSON"),
        "utf-8": (rebuild(good, metadata=b'{"a": "\xff"}'), "not valid JSON"),
        "nan": (rebuild(good, metadata=metadata.replace(b"1712.25", b"NaN")), "NaN"),
        "inf": (rebuild(good, metadata=metadata.replace(b"1712.25", b"1e999")), "not a finite number"),
        "big int": (rebuild(good, metadata=metadata.replace(b"1712.25", b"9" * 400)), "not a finite number"),
        "array": (rebuild(good, metadata=b"[1, 2]"), "JSON list, not an object"),
        "deep": (rebuild(good, metadata=b"[" * 2000 + b"]" * 2000), "not valid JSON|JSON list"),
        "missing": (rebuild(good, metadata=json.dumps({"stream_id": "x"}).encode()), "missing"),
        "unknown key": (rebuild(good, metadata=json.dumps({**valid_metadata, "eval": "x"}).encode()), "unknown"),
        "duplicate": (rebuild(good, metadata=metadata[:-1] + b',"width":3}'), "repeats a key"),
        "wrong type": (rebuild(good, metadata=json.dumps({**valid_metadata, "width": "640"}).encode()),
                       "'width': expected an integer"),
        "surrogate": (rebuild(good, metadata=metadata.replace(b'"cam-1"', b'"\\ud800"')), "not valid Unicode"),
        "negative": (rebuild(good, metadata=json.dumps({**valid_metadata, "frame_index": -5}).encode()), "outside"),
        "not a buffer": ([bytes(good[0]), 12, *as_bytes(good)[2:]], "frame 1 is a int, not a byte buffer"),
        "reserved": ([bytes(good[0])[:7] + b"\x01" + bytes(good[0])[8:], *as_bytes(good)[1:]], "reserved"),
    }  # fmt: skip
    for name, (frames, reason) in cases.items():
        with pytest.raises(MessageError, match=reason) as caught:
            decode(frames)
        assert caught.type is MessageError, name


def test_decode_accepts_optional_array_omitted_but_not_a_required_one() -> None:
    with_ids = as_bytes(encode(faces_message(2, track_ids=True)))
    without_ids = as_bytes(encode(faces_message(2, track_ids=False)))
    assert decode(without_ids).faces.track_ids is None
    assert len(with_ids) == len(without_ids) + 1
    with pytest.raises(MessageError, match="declares 6 arrays"):
        decode(rebuild(without_ids[:-1], n_arrays=6))


# ------------------------------------------------------------------------------------------------
# fuzzing: only MessageError ever comes out


def decodes_or_refuses(frames: list) -> None:
    try:
        message = decode(frames)
    except MessageError:
        return
    assert isinstance(message, (FrameMessage, FacesMessage, DescriptorsMessage, EndOfStream, Control))


VALID_FRAMES = [as_bytes(encode(message)) for message in all_messages()]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    decodes_or_refuses(frames)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=7), st.sampled_from(VALID_FRAMES))
def test_fuzz_valid_header_random_array_frames(arrays: list[bytes], valid: list[bytes]) -> None:
    decodes_or_refuses([valid[0], *arrays])


@FUZZ
@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6),
)
def test_fuzz_flipped_bytes(valid: list[bytes], flips: list[tuple[int, int, int]]) -> None:
    frames = [bytearray(frame) for frame in valid]
    for frame_choice, position, mask in flips:
        frame = frames[frame_choice % len(frames)]
        if frame:
            frame[position % len(frame)] ^= mask
    decodes_or_refuses([bytes(frame) for frame in frames])


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 3))
def test_fuzz_truncated_dropped_and_repeated_frames(valid: list[bytes], which: int, cut: int, how: int) -> None:
    frames = list(valid)
    index = which % len(frames)
    if how == 0:
        frames[index] = frames[index][: cut % (len(frames[index]) + 1)]
    elif how == 1:
        del frames[index]
    elif how == 2:
        frames.insert(index, frames[index])
    else:
        frames = frames[: index + 1]
    decodes_or_refuses(frames)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FACE_KEYS = ["stream_id", "frame_index", "timestamp", "width", "height"]


@FUZZ
@given(
    st.sampled_from(VALID_FRAMES),
    st.dictionaries(st.sampled_from([*FACE_KEYS, "live", "command", "frame_count", "x"]), JSON_VALUES, max_size=7),
)
def test_fuzz_metadata_schema(valid: list[bytes], metadata: dict) -> None:
    decodes_or_refuses(rebuild(valid, metadata=json.dumps(metadata).encode()))


PLAUSIBLE = (
    JSON_VALUES
    | st.integers(-3, 2**64)
    | st.floats(allow_nan=False)
    | st.sampled_from(["", "cam", "stop"])
    | st.text(st.characters(categories=["Cs", "Ll"]), max_size=3)  # lone surrogates too
)


@FUZZ
@given(st.fixed_dictionaries({key: PLAUSIBLE for key in FACE_KEYS}))
def test_fuzz_metadata_values(metadata: dict) -> None:
    """Every key present, so each value reaches its type check."""
    decodes_or_refuses(rebuild(VALID_FRAMES[1], metadata=json.dumps(metadata).encode()))


# ------------------------------------------------------------------------------------------------
# real sockets


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def socket_pair(context: zmq.Context, address: str) -> tuple[zmq.Socket, zmq.Socket]:
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 5000)  # a broken test fails instead of hanging
    pull.bind(address)
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 5000)
    push.connect(address)
    return push, pull


@pytest.mark.parametrize("transport", ["inproc", "ipc"])
def test_push_pull_over_real_sockets(context: zmq.Context, tmp_path: Path, transport: str) -> None:
    address = "inproc://facestream-test" if transport == "inproc" else f"ipc://{tmp_path / 'stage.sock'}"
    push, pull = socket_pair(context, address)
    sent = [*all_messages(), frame_message(480, 640)]
    for message in sent:
        messages.send(push, message)
    for message in sent:
        received = messages.recv(pull)
        assert_same(received, message)
    # A malformed message costs the receiver one MessageError; the next message decodes as usual.
    push.send_multipart([b"GIF89a", b"junk"])
    messages.send(push, EndOfStream("cam-1", 3))
    with pytest.raises(MessageError, match="wrong magic"):
        messages.recv(pull)
    assert_same(messages.recv(pull), EndOfStream("cam-1", 3))


def test_received_zmq_frames_are_decoded_without_copy(context: zmq.Context) -> None:
    push, pull = socket_pair(context, "inproc://zero-copy")
    message = faces_message(4)
    messages.send(push, message)
    frames = pull.recv_multipart(copy=False)
    assert all(isinstance(frame, zmq.Frame) for frame in frames)
    decoded = decode(frames)
    assert np.shares_memory(decoded.faces.chips, np.frombuffer(frames[4].buffer, np.uint8))
    assert_same(decoded, message)
