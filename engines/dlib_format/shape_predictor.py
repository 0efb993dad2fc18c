"""dlib's shape predictor files (dlib/image_processing/shape_predictor.h): the cascade of regression-tree
ensembles as stacked numpy arrays, every count and index checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .serialize import ByteReader, DlibFormatError, read_model_bytes


@dataclass(frozen=True)
class ShapePredictorModel:
    """An ensemble of regression trees, as stacked arrays (C cascades, T trees, depth D)."""

    initial_shape: np.ndarray  # (P, 2) float32, in the unit face box
    split_index1: np.ndarray  # (C, T, 2**D - 1) int32, heap order
    split_index2: np.ndarray  # (C, T, 2**D - 1) int32
    split_threshold: np.ndarray  # (C, T, 2**D - 1) float32
    leaf_values: np.ndarray  # (C, T, 2**D, P, 2) float32
    anchor_index: np.ndarray  # (C, F) int32: landmark each feature pixel is anchored to
    deltas: np.ndarray  # (C, F, 2) float32: offset from the anchor, in unit-box coordinates

    @property
    def num_parts(self) -> int:
        """Landmarks per face (5 or 68 for dlib's models)."""
        return int(self.initial_shape.shape[0])


def _read_initial_shape(reader: ByteReader) -> np.ndarray:
    """The mean shape: a float32 column of 2*P values (x, y per landmark) in the unit face box."""
    start = reader.offset
    try:
        initial = reader.float_matrix_column("initial_shape").astype(np.float32)
    except DlibFormatError as error:
        raise reader.fail(
            "the initial shape matrix of a shape predictor", error.found or error.expected, offset=start
        ) from None
    if initial.size == 0 or initial.size % 2:
        raise reader.fail("an initial shape of 2*P values", str(initial.size), offset=start)
    return initial


def _read_tree(reader: ByteReader, parts: int) -> tuple[list[int], list[int], list[float], np.ndarray]:
    """One regression tree: its splits (feature pair and threshold, heap order), then one vector per leaf."""
    num_splits = reader.uint("number of splits")
    a, b, t = [], [], []
    for _ in range(num_splits):
        a.append(reader.uint("split idx1"))
        b.append(reader.uint("split idx2"))
        t.append(reader.float("split threshold"))
    num_leaves = reader.uint("number of leaves")
    if num_leaves != num_splits + 1:
        raise reader.fail(f"{num_splits + 1} leaves for {num_splits} splits", str(num_leaves))
    tree_leaves = np.empty((num_leaves, 2 * parts), np.float64)
    for leaf in range(num_leaves):
        values = reader.float_matrix_column("leaf values")
        if values.size != 2 * parts:
            raise reader.fail(f"{2 * parts} leaf values", str(values.size))
        tree_leaves[leaf] = values
    return a, b, t, tree_leaves


def parse_shape_predictor(data: bytes, path: str = "<bytes>") -> ShapePredictorModel:
    """A shape predictor from its bytes (`path` names it in errors): every count, index and shape checked."""
    reader = ByteReader(data, path)
    if bytes(data[4:8]) == b"loss":
        # Networks start with 01 01 <string length> "loss..."; a shape predictor with 01 01 81 ...
        raise reader.fail(
            "a shape predictor (version 1, then the initial shape matrix)",
            "what looks like a dlib network (its loss layer name)",
            offset=2,
        )
    reader.expect_int(1, "the shape predictor version (1)")
    initial = _read_initial_shape(reader)
    parts = initial.size // 2
    num_cascades = reader.uint("number of cascades")
    idx1: list[list[list[int]]] = []
    idx2: list[list[list[int]]] = []
    thresholds: list[list[list[float]]] = []
    leaves: list[list[np.ndarray]] = []
    for _ in range(num_cascades):
        num_trees = reader.uint("number of trees")
        cascade = ([], [], [], [])
        for _ in range(num_trees):
            a, b, t, tree_leaves = _read_tree(reader, parts)
            cascade[0].append(a)
            cascade[1].append(b)
            cascade[2].append(t)
            cascade[3].append(tree_leaves)
        idx1.append(cascade[0])
        idx2.append(cascade[1])
        thresholds.append(cascade[2])
        leaves.append(cascade[3])
    anchors = [
        [reader.uint("anchor index") for _ in range(reader.uint("number of anchors"))]
        for _ in range(reader.expect_count(num_cascades, "anchor lists"))
    ]
    deltas = [
        [(reader.float("delta x"), reader.float("delta y")) for _ in range(reader.uint("number of deltas"))]
        for _ in range(reader.expect_count(num_cascades, "delta lists"))
    ]
    if not reader.at_end():
        raise reader.fail("the end of the shape predictor", f"{len(reader.data) - reader.offset} more bytes")
    try:
        model = ShapePredictorModel(
            initial_shape=initial.reshape(parts, 2),
            split_index1=np.array(idx1, np.int32),
            split_index2=np.array(idx2, np.int32),
            split_threshold=np.array(thresholds, np.float32),
            leaf_values=np.array(leaves, np.float32).reshape(num_cascades, -1, len(leaves[0][0]), parts, 2),
            anchor_index=np.array(anchors, np.int32),
            deltas=np.array(deltas, np.float32),
        )
    except (ValueError, IndexError):
        raise reader.fail("trees of equal depth and equal feature counts in every cascade", "ragged arrays") from None
    num_features = model.anchor_index.shape[1]
    if model.split_index1.max(initial=0) >= num_features or model.split_index2.max(initial=0) >= num_features:
        raise reader.fail(f"split feature indices below {num_features}", "larger ones")
    if model.anchor_index.max(initial=0) >= parts or model.deltas.shape[:2] != model.anchor_index.shape:
        raise reader.fail(f"anchors below {parts} and one delta per anchor", "mismatched anchors/deltas")
    return model


def read_shape_predictor(path: str | Path) -> ShapePredictorModel:
    """A shape predictor .dat file, parsed and checked."""
    return parse_shape_predictor(read_model_bytes(path, "a dlib shape predictor"), str(path))
