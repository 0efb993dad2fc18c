"""Typed messages between pipeline stages and their ZeroMQ wire format: a small header plus raw array frames.

A message is a list of ZeroMQ frames (one multipart message)::

    frame 0      header: fixed prefix, one descriptor per array, then the JSON metadata
    frame 1..n   the raw bytes of each array, C order, little-endian, in the order the type defines

Fixed prefix (12 bytes, little-endian, ``struct`` format ``<4sBBBxI``)::

    magic       4 bytes  b"FSTM"
    version     u8       FORMAT_VERSION (3)
    type        u8       MessageType: 1 frame, 2 faces, 3 descriptors, 4 end of stream, 5 control
    n_arrays    u8       number of array frames that follow (= array descriptors in this header)
    reserved    u8       must be 0
    meta_len    u32      length in bytes of the JSON metadata at the end of frame 0

Array descriptor (18 bytes each, ``<BB4I``): dtype code, ndim, then 4 u32 dimensions (unused ones 0).
Dtype codes are an allow-list (``DTYPE_CODES``: 1 uint8, 2 int64, 3 float32, 4 float64), and each array
of each type allows only its own dtypes and shape, e.g. faces' ``boxes`` are int64 (N,4) and ``chips``
uint8 (N,150,150,3) with one N shared by every array of the message (N may be 0). Arrays are never
described in the JSON; the JSON metadata holds only the scalar fields of the type (an object with
exactly those keys, each of a checked type: no NaN/Infinity, no duplicate keys, at most
``MAX_METADATA_BYTES``). Optional arrays (``track_ids``) come last and are absent by being omitted.

The faces and descriptors messages carry a frame's faces as one `engines.face_batch.FaceBatch` (``faces``): their
arrays are its columns, sent in the order below; a column the type does not send (faces: ``descriptors``;
descriptors: ``chips``) stays behind, and decodes as an empty column.

Version 2 added to faces and descriptors messages: ``box_source`` (N,) uint8 (`BOX_SCAN` 0: the box came
from a full-frame detector run on this frame; `BOX_REGION` 1: from region detection around a followed
face on this frame), ``embed`` (N,) uint8 (faces: 1 = embed this face; descriptors: 1 = its row holds a
descriptor, 0 = not embedded, the row is NaN) and the metadata flag ``scanned`` (a full-frame detector
ran on this frame). Constructors default them to today's meaning: every box from a scan, every face
embedded, the frame scanned.

Version 3 added the metadata flag ``new_scene`` to frame, faces and descriptors messages: the frame is
another scene than the stream's last one (a scene cut or a change of frame size, found by the source or by
the detect worker's follower), so the sink ends every track of the stream before this frame's faces
(else a face where a tracked face was would continue its track, and its identity). Default false.

Decoding checks everything against the actual frames — magic, version, type, frame count, header
length, dtype codes, shapes, the byte length of every array frame, the metadata keys and types — and
raises ``MessageError`` (one type, with the reason) on any mismatch, so a stage can drop and count bad
messages without crashing. Nothing from the wire is unpickled or evaluated. Decoded arrays are
read-only numpy views onto the received frames (``np.frombuffer``, no copy); copy one to modify it.
Encoded arrays are memoryviews of the caller's arrays (a copy is made only for a non-contiguous array or
a dtype cast), so ``send`` is zero-copy for large frames: do not modify an array after sending it until
ZeroMQ is done with it (pyzmq copies frames below ``zmq.COPY_THRESHOLD`` anyway).

Version bump rule: any change a version-1 decoder would misread or reject — the prefix or descriptor
layout, a dtype code, a type code, the order, dtypes or shapes of a type's arrays, or its metadata
keys or their types — increments ``FORMAT_VERSION``. Decoders accept exactly their own version: stages
on both sides of a socket are deployed together, and a mixed deployment shows up as counted
``MessageError``s ("unsupported format version 2") rather than misread data. Adding a new message type
is the one change that needs no bump (old decoders reject the unknown type code by name).
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeAlias

import numpy as np

from ...engines.face_batch import BOX_SCAN, FaceBatch
from ...errors import InputError

__all__ = [
    "CHIP_SIZE",
    "DESCRIPTOR_SIZE",
    "DTYPE_CODES",
    "FORMAT_VERSION",
    "MAGIC",
    "Control",
    "DescriptorsMessage",
    "EndOfStream",
    "FacesMessage",
    "FrameMessage",
    "Message",
    "MessageError",
    "MessageType",
    "decode",
    "encode",
    "recv",
    "send",
]

MAGIC = b"FSTM"
FORMAT_VERSION = 3  # 2: faces and descriptors carry box_source, embed and scanned; 3: new_scene
CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
MAX_METADATA_BYTES = 4096
MAX_STREAM_ID_CHARS = 256
MAX_QUALITY_COLUMNS = 64
MAX_IMAGE_SIDE = 1 << 16

_PREFIX = struct.Struct("<4sBBBxI")
_ARRAY = struct.Struct("<BB4I")
_MAX_NDIM = 4

# The allow-list of array element types on the wire; always little-endian.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("<u1"),
    2: np.dtype("<i8"),
    3: np.dtype("<f4"),
    4: np.dtype("<f8"),
}
_CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}


class MessageError(InputError, ValueError):
    """A message that cannot be encoded or decoded; the text says why. Stages drop and count these."""


class MessageType(enum.IntEnum):
    """The kind of a message, first field of its wire header."""

    FRAME = 1
    FACES = 2
    DESCRIPTORS = 3
    END_OF_STREAM = 4
    CONTROL = 5


@dataclass(eq=False)
class FrameMessage:
    """One captured frame: source -> detect+align. ``image`` is (H,W,3) uint8 RGB."""

    stream_id: str
    frame_index: int
    timestamp: float  # capture time, seconds
    live: bool  # live source (newest frame wins) or file (every frame, in order)
    image: np.ndarray
    new_scene: bool = False  # the source found a scene cut or a size change here


@dataclass(eq=False)
class FacesMessage:
    """The faces of one frame, aligned: detect+align -> embed. N may be 0 (the frame still counts).

    ``faces`` sends boxes, scores, landmarks, chips, quality, box_source, embed and track_ids when set."""

    stream_id: str
    frame_index: int
    timestamp: float
    width: int  # of the source frame, pixels
    height: int
    faces: FaceBatch
    scanned: bool = True  # a full-frame detector ran on this frame
    new_scene: bool = False  # another scene than the last frame's: the sink ends the stream's tracks

    def __post_init__(self) -> None:
        self.faces = _with_face_flags(self.faces)

    def __len__(self) -> int:
        return len(self.faces)


@dataclass(eq=False)
class DescriptorsMessage:
    """The faces of one frame with their descriptors, without chips: embed -> match.

    ``faces`` sends boxes, scores, landmarks, quality, descriptors (NaN rows where ``embed`` is 0),
    box_source, embed and track_ids when set."""

    stream_id: str
    frame_index: int
    timestamp: float
    width: int
    height: int
    faces: FaceBatch
    scanned: bool = True
    new_scene: bool = False

    def __post_init__(self) -> None:
        self.faces = _with_face_flags(self.faces)

    def __len__(self) -> int:
        return len(self.faces)

    @classmethod
    def from_faces(cls, faces: FacesMessage, descriptors: np.ndarray) -> DescriptorsMessage:
        """The embed stage's output: ``faces`` without its chips, plus their (N,128) descriptors."""
        batch = replace(faces.faces, chips=FaceBatch().chips, descriptors=descriptors)
        return cls(faces.stream_id, faces.frame_index, faces.timestamp, faces.width, faces.height, batch,
                   faces.scanned, faces.new_scene)  # fmt: skip


def _with_face_flags(faces: FaceBatch) -> FaceBatch:
    """`faces`, or a copy with what a constructor left out filled in: box_source all BOX_SCAN, embed all 1."""
    count = len(faces)
    missing = {}
    if count and not len(faces.box_source):
        missing["box_source"] = np.full(count, BOX_SCAN, np.uint8)
    if count and not len(faces.embed):
        missing["embed"] = np.ones(count, np.uint8)
    return replace(faces, **missing) if missing else faces


@dataclass(eq=False)
class EndOfStream:
    """The source has sent every frame of the stream: ``frame_count`` frames, indices 0..frame_count-1."""

    stream_id: str
    frame_count: int


@dataclass(eq=False)
class Control:
    """A command to a stage, e.g. "stop"; ``stream_id`` "" means every stream."""

    command: str
    stream_id: str = ""


Message: TypeAlias = FrameMessage | FacesMessage | DescriptorsMessage | EndOfStream | Control

# ------------------------------------------------------------------------------------------------
# schemas: the metadata fields and the arrays of each type


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise MessageError(f"field {field!r}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise MessageError(f"field {field!r}: {str(value)[:40]} is outside [{low}, {high}]")
    return int(value)


def _count(value: Any, field: str) -> int:
    return _integer(value, field, 0, 2**63 - 1)


def _pixels(value: Any, field: str) -> int:
    return _integer(value, field, 0, 2**31 - 1)


def _seconds(value: Any, field: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MessageError(f"field {field!r}: expected a number, got {type(value).__name__}")
    try:
        seconds = float(value)  # OverflowError for an integer beyond float range
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise MessageError(f"field {field!r}: {str(value)[:40]} is not a finite number")
    return seconds


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise MessageError(f"field {field!r}: expected true or false, got {type(value).__name__}")
    return bool(value)


def _text(value: Any, field: str, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise MessageError(f"field {field!r}: expected a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise MessageError(f"field {field!r}: must not be empty")
    if len(value) > MAX_STREAM_ID_CHARS:
        raise MessageError(f"field {field!r}: longer than {MAX_STREAM_ID_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes can carry
        raise MessageError(f"field {field!r}: not valid Unicode text") from None
    return value


def _stream_id(value: Any, field: str) -> str:
    return _text(value, field, allow_empty=False)


def _any_stream_id(value: Any, field: str) -> str:
    return _text(value, field, allow_empty=True)


_COMMAND = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _command(value: Any, field: str) -> str:
    value = _text(value, field, allow_empty=False)
    if not _COMMAND.fullmatch(value):
        raise MessageError(f"field {field!r}: {value[:40]!r} is not a command name ([a-z][a-z0-9_]{{0,31}})")
    return value


_Check = Callable[[Any, str], Any]


@dataclass(frozen=True)
class _ArraySlot:
    name: str
    dtypes: tuple[np.dtype, ...]  # allowed on the wire; encode casts other safely-castable input to dtypes[0]
    shape: tuple[int | str, ...]  # an int is fixed; a letter is a dimension shared by the message's arrays
    optional: bool = False  # optional slots come last and are omitted when absent


# Bounds of the shared dimensions; N (the face count) is bounded by the frame sizes only.
_DIMENSION_BOUNDS = {
    "N": (0, 2**32 - 1), "H": (1, MAX_IMAGE_SIDE), "W": (1, MAX_IMAGE_SIDE), "K": (0, MAX_QUALITY_COLUMNS),
}  # fmt: skip


@dataclass(frozen=True)
class _Schema:
    cls: type
    metadata: dict[str, _Check]
    arrays: tuple[_ArraySlot, ...]
    batch: bool = False  # the arrays are columns of the message's FaceBatch (``faces``), not its own fields

    def holder(self, message: Message) -> Any:
        """What holds the arrays of `message`: itself, or its FaceBatch."""
        return message.faces if self.batch else message

    @property
    def required_arrays(self) -> int:
        return sum(not slot.optional for slot in self.arrays)


_U8, _I8, _F4, _F8 = (np.dtype(code) for code in ("<u1", "<i8", "<f4", "<f8"))
_FACE_METADATA: dict[str, _Check] = {
    "stream_id": _stream_id, "frame_index": _count, "timestamp": _seconds, "width": _pixels, "height": _pixels,
    "scanned": _flag, "new_scene": _flag,
}  # fmt: skip
_BOXES = _ArraySlot("boxes", (_I8,), ("N", 4))
_SCORES = _ArraySlot("scores", (_F8, _F4), ("N",))
_LANDMARKS = _ArraySlot("landmarks", (_I8,), ("N", 5, 2))
_QUALITY = _ArraySlot("quality", (_F4,), ("N", "K"))
_CHIPS = _ArraySlot("chips", (_U8,), ("N", CHIP_SIZE, CHIP_SIZE, 3))
_DESCRIPTORS = _ArraySlot("descriptors", (_F4,), ("N", DESCRIPTOR_SIZE))
_TRACK_IDS = _ArraySlot("track_ids", (_I8,), ("N",), optional=True)
_BOX_SOURCE = _ArraySlot("box_source", (_U8,), ("N",))
_EMBED = _ArraySlot("embed", (_U8,), ("N",))

_SCHEMAS: dict[MessageType, _Schema] = {
    MessageType.FRAME: _Schema(
        FrameMessage,
        {"stream_id": _stream_id, "frame_index": _count, "timestamp": _seconds, "live": _flag, "new_scene": _flag},
        (_ArraySlot("image", (_U8,), ("H", "W", 3)),),
    ),
    MessageType.FACES: _Schema(
        FacesMessage,
        _FACE_METADATA,
        (_BOXES, _SCORES, _LANDMARKS, _CHIPS, _QUALITY, _BOX_SOURCE, _EMBED, _TRACK_IDS),
        batch=True,
    ),
    MessageType.DESCRIPTORS: _Schema(
        DescriptorsMessage,
        _FACE_METADATA,
        (_BOXES, _SCORES, _LANDMARKS, _QUALITY, _DESCRIPTORS, _BOX_SOURCE, _EMBED, _TRACK_IDS),
        batch=True,
    ),
    MessageType.END_OF_STREAM: _Schema(EndOfStream, {"stream_id": _stream_id, "frame_count": _count}, ()),
    MessageType.CONTROL: _Schema(Control, {"command": _command, "stream_id": _any_stream_id}, ()),
}
_TYPE_OF_CLASS = {schema.cls: message_type for message_type, schema in _SCHEMAS.items()}

for _schema in _SCHEMAS.values():  # the invariants the codec relies on
    _names = {slot.name for slot in _schema.arrays}
    if _schema.batch:
        assert set(_schema.metadata) | {"faces"} == {f.name for f in fields(_schema.cls)}
        assert _names <= {f.name for f in fields(FaceBatch)}
    else:
        assert set(_schema.metadata) | _names == {f.name for f in fields(_schema.cls)}
    assert all(slot.optional for slot in _schema.arrays[_schema.required_arrays :])
    assert all(len(slot.shape) <= _MAX_NDIM for slot in _schema.arrays)


def _check_shape(slot: _ArraySlot, shape: tuple[int, ...], dimensions: dict[str, int]) -> None:
    """Check `shape` against the slot; record shared dimensions in `dimensions` (first array sets them)."""
    if len(shape) != len(slot.shape):
        raise MessageError(f"array {slot.name!r}: expected {len(slot.shape)} dimensions, got shape {shape}")
    for size, expected in zip(shape, slot.shape):
        if isinstance(expected, int):
            if size != expected:
                raise MessageError(f"array {slot.name!r}: shape {shape} does not match {slot.shape}")
            continue
        if expected in dimensions:
            if size != dimensions[expected]:
                raise MessageError(
                    f"array {slot.name!r}: shape {shape} has {expected}={size}, earlier arrays {dimensions[expected]}"
                )
            continue
        low, high = _DIMENSION_BOUNDS[expected]
        if not low <= size <= high:
            raise MessageError(f"array {slot.name!r}: {expected}={size} in shape {shape} is outside [{low}, {high}]")
        dimensions[expected] = size


# ------------------------------------------------------------------------------------------------
# encoding


def _wire_array(slot: _ArraySlot, value: Any) -> np.ndarray:
    """`value` as a C-contiguous array of one of the slot's wire dtypes (no copy when it already is one)."""
    array = np.asarray(value)
    if array.dtype not in slot.dtypes:
        if not np.can_cast(array.dtype, slot.dtypes[0], casting="safe"):
            allowed = " or ".join(str(dtype) for dtype in slot.dtypes)
            raise MessageError(f"array {slot.name!r}: dtype {array.dtype} cannot be sent as {allowed}")
        array = array.astype(slot.dtypes[0])
    return np.ascontiguousarray(array)


def encode(message: Message) -> list[bytes | memoryview]:
    """The ZeroMQ frames of `message`: header, then a memoryview per array (zero-copy when contiguous)."""
    message_type = _TYPE_OF_CLASS.get(type(message))
    if message_type is None:
        raise MessageError(f"cannot encode a {type(message).__name__}")
    schema = _SCHEMAS[message_type]
    metadata = {name: check(getattr(message, name), name) for name, check in schema.metadata.items()}
    metadata_bytes = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    if len(metadata_bytes) > MAX_METADATA_BYTES:
        raise MessageError(f"metadata is {len(metadata_bytes)} bytes, more than {MAX_METADATA_BYTES}")

    descriptors, buffers, dimensions = [], [], {}
    holder = schema.holder(message)
    for index, slot in enumerate(schema.arrays):
        value = getattr(holder, slot.name)
        if value is None:
            if not slot.optional:
                raise MessageError(f"array {slot.name!r} is missing")
            if any(getattr(holder, later.name) is not None for later in schema.arrays[index + 1 :]):
                raise MessageError(f"array {slot.name!r} is missing but a later optional array is present")
            break
        array = _wire_array(slot, value)
        _check_shape(slot, array.shape, dimensions)
        dims = (*array.shape, *(0,) * (_MAX_NDIM - array.ndim))
        descriptors.append(_ARRAY.pack(_CODE_OF_DTYPE[array.dtype], array.ndim, *dims))
        # A flat byte view: memoryview.cast refuses arrays with a zero in their shape (N=0), numpy does not.
        buffers.append(memoryview(array.reshape(-1).view(np.uint8)))

    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, message_type, len(buffers), len(metadata_bytes))
    return [b"".join((prefix, *descriptors, metadata_bytes)), *buffers]


# ------------------------------------------------------------------------------------------------
# decoding


def _byte_view(frame: Any, index: int) -> memoryview:
    """A flat, read-only byte view of one received frame (bytes, memoryview, zmq.Frame, ...)."""
    try:
        view = memoryview(frame)
    except TypeError:
        raise MessageError(f"frame {index} is a {type(frame).__name__}, not a byte buffer") from None
    if view.nbytes == 0:
        return memoryview(b"")
    if view.ndim != 1 or view.format != "B":
        try:
            view = view.cast("B")
        except TypeError:
            raise MessageError(f"frame {index} is not a contiguous byte buffer") from None
    return view.toreadonly()


def _reject_constant(name: str) -> None:
    raise MessageError(f"metadata holds {name}, which is not a finite number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MessageError("metadata repeats a key")
    return result


def _decode_metadata(raw: memoryview, schema: _Schema) -> dict[str, Any]:
    try:
        parsed = json.loads(
            str(raw, "utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )  # fmt: skip
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if isinstance(error, MessageError):
            raise
        raise MessageError(f"metadata is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise MessageError(f"metadata is a JSON {type(parsed).__name__}, not an object")
    missing = schema.metadata.keys() - parsed.keys()
    unknown = parsed.keys() - schema.metadata.keys()
    if missing or unknown:
        raise MessageError(f"metadata keys: missing {sorted(missing)}, unknown {sorted(unknown)[:5]}")
    return {name: check(parsed[name], name) for name, check in schema.metadata.items()}


def decode(frames: Sequence[Any]) -> Message:
    """The message in `frames` (bytes, memoryviews or zmq.Frames); MessageError says what is wrong with them."""
    if not isinstance(frames, (list, tuple)):
        raise MessageError(f"expected a list of frames, got a {type(frames).__name__}")
    if not frames:
        raise MessageError("no frames")
    header = _byte_view(frames[0], 0)
    if header[: len(MAGIC)] != MAGIC:
        raise MessageError(f"wrong magic {bytes(header[: len(MAGIC)])!r}, expected {MAGIC!r}")
    if len(header) < _PREFIX.size:
        raise MessageError(f"header is {len(header)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    _, version, type_code, n_arrays, metadata_length = _PREFIX.unpack_from(header)
    if version != FORMAT_VERSION:
        raise MessageError(f"unsupported format version {version}, this decoder reads version {FORMAT_VERSION}")
    if header[7] != 0:
        raise MessageError(f"reserved header byte is {header[7]}, expected 0")
    try:
        message_type = MessageType(type_code)
    except ValueError:
        raise MessageError(f"unknown message type {type_code}") from None
    schema = _SCHEMAS[message_type]
    if not schema.required_arrays <= n_arrays <= len(schema.arrays):
        raise MessageError(
            f"{message_type.name} message declares {n_arrays} arrays, expected "
            f"{schema.required_arrays}..{len(schema.arrays)}"
        )
    if len(frames) != 1 + n_arrays:
        raise MessageError(f"{message_type.name} message has {len(frames)} frames, its header declares {1 + n_arrays}")
    if metadata_length > MAX_METADATA_BYTES:
        raise MessageError(f"metadata length {metadata_length} is more than {MAX_METADATA_BYTES}")
    expected_header = _PREFIX.size + n_arrays * _ARRAY.size + metadata_length
    if len(header) != expected_header:
        raise MessageError(f"header is {len(header)} bytes, its lengths add up to {expected_header}")

    specs, dimensions = [], {}
    for index, slot in enumerate(schema.arrays[:n_arrays]):
        code, ndim, *dims = _ARRAY.unpack_from(header, _PREFIX.size + index * _ARRAY.size)
        dtype = DTYPE_CODES.get(code)
        if dtype is None:
            raise MessageError(f"array {slot.name!r}: unknown dtype code {code}")
        if dtype not in slot.dtypes:
            raise MessageError(f"array {slot.name!r}: dtype {dtype} is not allowed here")
        if not 1 <= ndim <= _MAX_NDIM or any(dims[ndim:]):
            raise MessageError(f"array {slot.name!r}: bad dimensions ndim={ndim} {dims}")
        shape = tuple(dims[:ndim])
        _check_shape(slot, shape, dimensions)
        data = _byte_view(frames[1 + index], 1 + index)
        expected_bytes = math.prod(shape) * dtype.itemsize
        if len(data) != expected_bytes:
            raise MessageError(
                f"array {slot.name!r}: frame is {len(data)} bytes, {dtype} {shape} needs {expected_bytes}"
            )
        specs.append((slot.name, data, dtype, shape))

    start = _PREFIX.size + n_arrays * _ARRAY.size
    values = _decode_metadata(header[start:], schema)
    arrays = {name: np.frombuffer(data, dtype=dtype).reshape(shape) for name, data, dtype, shape in specs}
    if schema.batch:
        return schema.cls(**values, faces=FaceBatch(**arrays))
    return schema.cls(**values, **arrays)


# ------------------------------------------------------------------------------------------------
# sockets


def send(socket: Any, message: Message, flags: int = 0) -> None:
    """Send `message` as one multipart ZeroMQ message, without copying its arrays."""
    socket.send_multipart(encode(message), flags=flags, copy=False)


def recv(socket: Any, flags: int = 0) -> Message:
    """Receive and decode one message; MessageError when it is malformed (the frames are consumed)."""
    return decode(socket.recv_multipart(flags=flags, copy=False))
