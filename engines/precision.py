"""FP16 before deploying it: the ONNX graphs in half precision, simulated on the CPU and typed for TensorRT.

Two rewrites of one FP32 graph, both keeping the nodes named in `keep_fp32` in FP32 (mixed precision):

* `simulate_fp16`: still a float32 graph that ONNX Runtime runs on the CPU, but the input, every weight
  and every node's output are rounded to float16 (Cast to FLOAT16 then back to FLOAT after each node).
  Inside a node the arithmetic stays float32, as TensorRT's FP16 convolutions accumulate in FP32 on
  tensor cores; what it models is the storage of every tensor in half precision.
* `fp16_graph`: the graph TensorRT builds a strongly typed FP16 engine from: float16 weights and
  activations, a Cast to FLOAT16 after the float32 input and to FLOAT before the float32 output, and
  Casts around every node kept in FP32.

`compare` measures a candidate (FP16) detector and embedder against the FP32 ones on images: detection
agreement, descriptor drift, pairwise-distance change and identities changed at the match threshold.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_export import score_node_names

# Nodes kept in FP32 in each network's FP16 engine (README, "GPU"): the detector's last convolution (now its
# row sums) writes the score map, where float16's step of 1e-3 near 1.0 turns near-tied windows into ties
# (5 boxes moved by one position on the bundled data with it in FP16, 2 without; measured on export v1).
KEEP_FP32: dict[str, tuple[str, ...]] = {"detector": score_node_names(), "embedder": ()}
# `engine.precision: auto` (the default): each network's precision, chosen by `facestream engines check`.
# Measured on the bundled data (README, "GPU"): FP16 misses the bar for both networks (2 detector boxes move by
# one window; one pair 2.7e-6 below 0.6 crosses it), so both default to FP32; fp16 is there on request.
DEFAULT_PRECISION: dict[str, str] = {"detector": "fp32", "embedder": "fp32"}
PRECISION_SETTINGS = ("auto", "fp16", "fp32")


def resolve_precision(kind: str, configured: str) -> str:
    """The precision network `kind` runs at for `engine.precision` (auto: the measured default)."""
    if configured not in PRECISION_SETTINGS:
        raise ValueError(f"engine.precision must be one of {', '.join(PRECISION_SETTINGS)}, got {configured!r}")
    return DEFAULT_PRECISION[kind] if configured == "auto" else configured


# What FP16 must keep against FP32 for a network to default to it (engine.precision: fp16).
MAX_DESCRIPTOR_DRIFT = 0.01
MATCH_THRESHOLD = 0.6
MIN_IOU = 0.99
PARITY = 1e-4  # descriptors against dlib's (the project's parity tolerance)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _check_keep(model: onnx.ModelProto, keep_fp32: Iterable[str]) -> set[str]:
    keep = set(keep_fp32)
    unknown = keep - {node.name for node in model.graph.node}
    if unknown:
        raise ValueError(f"keep_fp32 names nodes the graph does not have: {sorted(unknown)}")
    return keep


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], name=f"{target}_cast", to=to)


def _float_initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer if init.data_type == TensorProto.FLOAT}


def simulate_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """A float32 graph computing what an FP16 engine stores: input, weights and each node's output rounded
    to float16 (nodes in `keep_fp32` take the rounded inputs but keep float32 weights and outputs)."""
    keep = _check_keep(model, keep_fp32)
    out = copy.deepcopy(model)
    graph = out.graph
    floats = _float_initializers(graph)
    rounded: dict[str, str] = {}
    for name, init in floats.items():
        if any(node.name not in keep for node in _consumers(graph).get(name, [])):
            values = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            rounded[name] = f"{name}__fp16"
            graph.initializer.append(numpy_helper.from_array(values, rounded[name]))
    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for graph_input in graph.input:
        half, back = f"{graph_input.name}__h", f"{graph_input.name}__r"
        nodes += [_cast(graph_input.name, half, TensorProto.FLOAT16), _cast(half, back, TensorProto.FLOAT)]
        renamed[graph_input.name] = back
    for node in graph.node:
        node = copy.deepcopy(node)
        kept = node.name in keep
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
            elif name in rounded and not kept:
                node.input[i] = rounded[name]
        nodes.append(node)
        if kept:
            continue
        for i, name in enumerate(node.output):
            raw, half = f"{name}__raw", f"{name}__h"
            node.output[i] = raw
            nodes += [_cast(raw, half, TensorProto.FLOAT16), _cast(half, name, TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    _drop_unused_initializers(graph)
    return out


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fp16_graph(model: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """The same network typed in float16 for a strongly typed TensorRT build: float32 input and output, a
    Cast after the one and before the other, float16 weights and tensors, FP32 islands for `keep_fp32`."""
    keep = _check_keep(model, keep_fp32)
    out = copy.deepcopy(model)
    graph = out.graph
    floats = _float_initializers(graph)
    consumers = _consumers(graph)
    half_weights: dict[str, str] = {}
    for name, init in floats.items():
        if any(node.name not in keep for node in consumers.get(name, [])):
            half_weights[name] = f"{name}__fp16"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                                             half_weights[name]))  # fmt: skip
    # The type each activation has in the new graph, and where its other-typed twin is when one was made.
    fp16: set[str] = set()
    twins: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []

    def typed(name: str, want: int) -> str:
        have = TensorProto.FLOAT16 if name in fp16 else TensorProto.FLOAT
        if have == want:
            return name
        if (name, want) not in twins:
            twins[(name, want)] = f"{name}__{'h' if want == TensorProto.FLOAT16 else 'f'}"
            nodes.append(_cast(name, twins[(name, want)], want))
        return twins[(name, want)]

    activations = {i.name for i in graph.input}
    for node in graph.node:
        node = copy.deepcopy(node)
        kept = node.name in keep
        want = TensorProto.FLOAT if kept else TensorProto.FLOAT16
        for i, name in enumerate(node.input):
            if name in half_weights and not kept:
                node.input[i] = half_weights[name]
            elif name in activations:
                node.input[i] = typed(name, want)
        nodes.append(node)
        activations.update(node.output)
        if not kept:
            fp16.update(node.output)
    for graph_output in graph.output:
        if graph_output.name in fp16:  # rename the producer's tensor, cast it back under the output's name
            half = f"{graph_output.name}__out"
            for node in nodes:
                for i, name in enumerate(node.output):
                    if name == graph_output.name:
                        node.output[i] = half
                for i, name in enumerate(node.input):
                    if name == graph_output.name:
                        node.input[i] = half
            nodes.append(_cast(half, graph_output.name, TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    _drop_unused_initializers(graph)
    return out


# ------------------------------------------------------------------------------------------------
# measuring a candidate against FP32


@dataclass
class Sample:
    """One image to compare on, and the upsampling the detector runs it at."""

    name: str
    image: np.ndarray
    upsample: int


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of dlib's inclusive [l, t, r, b] boxes, (len(a), len(b))."""
    a, b = a.astype(np.float64)[:, None], b.astype(np.float64)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0] + 1) * (r[..., 3] - r[..., 1] + 1)  # noqa: E731
    inter = w * h
    return inter / (area(a) + area(b) - inter)


def compare(
    samples: Sequence[Sample], reference: Any, candidate: Any, align: Callable[[np.ndarray, np.ndarray], np.ndarray],
    chips: np.ndarray | None = None, near: float = 0.05,
) -> dict[str, Any]:  # fmt: skip
    """`reference` and `candidate`: (detector, embedder) pairs (FP32 and the precision under test).

    Detection: each image through both detectors; faces matched greedily by IoU; counts, the lowest IoU,
    the largest score change, and every face whose FP32 score lies within `near` of the detector's
    threshold. Descriptors: the FP32 detector's faces (aligned by `align(image, boxes) -> chips`) plus
    `chips`, through both embedders, so the embedder alone is compared."""
    ref_detector, ref_embedder = reference
    cand_detector, cand_embedder = candidate
    threshold = float(ref_detector.threshold)
    detection: dict[str, Any] = {"faces_fp32": 0, "faces_candidate": 0, "matched": 0, "min_iou": 1.0,
                                 "max_score_drift": 0.0, "near_threshold": [], "disagreements": [],
                                 "moved": []}  # fmt: skip
    all_chips = [] if chips is None else [chips]
    labels = [] if chips is None else [f"chip {i}" for i in range(len(chips))]
    for sample in samples:
        boxes, scores = ref_detector.detect(sample.image, sample.upsample)
        other_boxes, other_scores = cand_detector.detect(sample.image, sample.upsample)
        detection["faces_fp32"] += len(boxes)
        detection["faces_candidate"] += len(other_boxes)
        iou = _iou(boxes, other_boxes) if len(boxes) and len(other_boxes) else np.zeros((len(boxes), 0))
        pairs: list[tuple[int, int]] = []
        while iou.size and iou.max() > 0.5:
            i, j = np.unravel_index(np.argmax(iou), iou.shape)
            pairs.append((int(i), int(j)))
            detection["min_iou"] = min(detection["min_iou"], float(iou[i, j]))
            iou[i, :], iou[:, j] = -1, -1
        detection["matched"] += len(pairs)
        for i, j in pairs:
            overlap = float(_iou(boxes[i : i + 1], other_boxes[j : j + 1])[0, 0])
            if overlap < MIN_IOU:
                detection["moved"].append({"image": sample.name, "iou": round(overlap, 4),
                                           "fp32": [*boxes[i].tolist(), round(float(scores[i]), 4)],
                                           "candidate": [*other_boxes[j].tolist(), round(float(other_scores[j]), 4)]})
            drift = abs(float(other_scores[j]) - float(scores[i]))
            detection["max_score_drift"] = max(detection["max_score_drift"], drift)
            if abs(float(scores[i]) - threshold) <= near:
                detection["near_threshold"].append({"image": sample.name, "score_fp32": round(float(scores[i]), 6),
                                                    "score_candidate": round(float(other_scores[j]), 6)})  # fmt: skip
        if len(pairs) != len(boxes) or len(pairs) != len(other_boxes):
            detection["disagreements"].append({"image": sample.name, "fp32": [round(float(s), 4) for s in scores],
                                               "candidate": [round(float(s), 4) for s in other_scores]})  # fmt: skip
        for i in range(len(boxes)):
            if abs(float(scores[i]) - threshold) <= near and i not in {p[0] for p in pairs}:
                detection["near_threshold"].append({"image": sample.name, "score_fp32": round(float(scores[i]), 6),
                                                    "score_candidate": None})  # fmt: skip
        if len(boxes):
            all_chips.append(align(sample.image, boxes))
            labels += [f"{sample.name} face {i}" for i in range(len(boxes))]
    detection["agree"] = (not detection["disagreements"]) and detection["min_iou"] >= MIN_IOU
    detection["max_score_drift"] = round(detection["max_score_drift"], 7)
    detection["min_iou"] = round(detection["min_iou"], 6)
    batch = np.concatenate(all_chips) if all_chips else np.zeros((0, 150, 150, 3), np.uint8)
    ours, theirs = ref_embedder.embed_chips(batch), cand_embedder.embed_chips(batch)
    drift = np.linalg.norm(theirs.astype(np.float64) - ours, axis=1)
    embedding: dict[str, Any] = {"faces": len(batch), "max_drift": float(drift.max()) if len(drift) else 0.0,
                                 "median_drift": float(np.median(drift)) if len(drift) else 0.0}  # fmt: skip
    upper = np.triu_indices(len(batch), 1)
    d32 = np.linalg.norm(ours[:, None].astype(np.float64) - ours[None], axis=2)[upper]
    d16 = np.linalg.norm(theirs[:, None].astype(np.float64) - theirs[None], axis=2)[upper]
    embedding["pairs"] = len(d32)
    embedding["max_pairwise_change"] = float(np.abs(d16 - d32).max()) if len(d32) else 0.0
    flips = np.flatnonzero((d32 <= MATCH_THRESHOLD) != (d16 <= MATCH_THRESHOLD))
    embedding["identities_changed"] = len(flips)
    # Pairs within the descriptor parity tolerance of the threshold are ties even FP32 does not settle
    # (it is within 1e-4 of dlib): counted apart, for the reader; the bar counts every change.
    embedding["identities_changed_beyond_parity"] = int(np.sum(np.abs(d32[flips] - MATCH_THRESHOLD) > PARITY))
    embedding["changes"] = [{"a": labels[upper[0][k]], "b": labels[upper[1][k]], "fp32": round(float(d32[k]), 7),
                             "candidate": round(float(d16[k]), 7)} for k in flips[:20]]  # fmt: skip
    embedding["closest_pair_to_threshold"] = float(np.abs(d32 - MATCH_THRESHOLD).min()) if len(d32) else None
    passed = detection["agree"] and embedding["max_drift"] < MAX_DESCRIPTOR_DRIFT and not embedding[
        "identities_changed"]  # fmt: skip
    return {"detection": detection, "embedding": embedding,
            "bar": {"max_descriptor_drift": MAX_DESCRIPTOR_DRIFT, "match_threshold": MATCH_THRESHOLD,
                    "min_iou": MIN_IOU, "passed": bool(passed)}}  # fmt: skip
