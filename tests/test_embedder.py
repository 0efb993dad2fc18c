"""The ONNX face embedder against dlib's descriptors: golden files, then dlib-bin on unseen faces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from facestream.engines.chips import extract_face_chips
from facestream.engines.embedder import FaceEmbedder, normalize_chips
from facestream.engines.models import model_path
from facestream.engines.onnx_cache import cached_onnx
from facestream.engines.onnx_export import CHANNEL_BLOCK

from conftest import DATA, golden_images, load_rgb_as_dlib, require_dlib

# Operators TensorRT's ONNX parser supports that these graphs may use.
ALLOWED_OPS = {
    "Conv", "Relu", "Add", "Mul", "Pad", "Slice", "Sum", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
    "Gemm",
}  # fmt: skip


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> FaceEmbedder:
    return FaceEmbedder.from_file(model_path("embedder"), cache_dir=tmp_path_factory.mktemp("cache"), max_batch=16)


def _golden_faces() -> list[tuple[str, int, dict]]:
    return [(rel, i, face) for rel, record in golden_images().items() for i, face in enumerate(record["cnn_faces"])]


def test_every_golden_descriptor(embedder: FaceEmbedder) -> None:
    """Our chips (from dlib's landmarks, one face at a time) through our network vs dlib's descriptor."""
    chips, expected, names = [], [], []
    for rel, index, face in _golden_faces():
        image = load_rgb_as_dlib(DATA / rel)
        chips.append(extract_face_chips(image, np.array([face["landmarks_5"]]))[0])
        expected.append(face["descriptor"])
        names.append(f"{rel}#{index}")
    assert len(chips) == 84
    descriptors = embedder.embed_chips(np.stack(chips))
    distances = np.linalg.norm(descriptors - np.array(expected), axis=1)
    worst = int(np.argmax(distances))
    assert distances.max() < 1e-4, f"{names[worst]} is {distances[worst]:.2e} from dlib's descriptor"


def test_batching_does_not_change_descriptors(embedder: FaceEmbedder) -> None:
    rel, _, face = _golden_faces()[0]
    chip = extract_face_chips(load_rgb_as_dlib(DATA / rel), np.array([face["landmarks_5"]]))
    rng = np.random.default_rng(3)
    batch = np.concatenate([chip, rng.integers(0, 256, (36, 150, 150, 3), dtype=np.uint8)])
    together = embedder.embed_chips(batch)
    alone = embedder.embed_chips(chip)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-6)
    assert together.shape == (37, 128) and together.dtype == np.float32


def test_empty_and_bad_batches(embedder: FaceEmbedder) -> None:
    assert embedder.embed_chips(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match=r"face chips must be \(N,150,150,3\) uint8"):
        embedder.embed_chips(np.zeros((2, 100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed_chips(np.zeros((1, 150, 150, 3), np.float32))


def test_normalisation_matches_dlib_input_layer() -> None:
    chips = np.array([[[[0, 128, 255]]]], np.uint8).repeat(150, 1).repeat(150, 2)
    planes = normalize_chips(chips)
    expected = (np.array([0, 128, 255], np.float32) - np.array([122.782, 117.001, 104.298], np.float32)) / 256
    np.testing.assert_array_equal(planes[0, :, 0, 0], expected.astype(np.float32))


@pytest.mark.parametrize("kind", ["embedder", "detector"])
def test_onnx_graph_is_valid_and_tensorrt_friendly(kind: str, tmp_path: Path) -> None:
    path = cached_onnx(model_path(kind), kind, tmp_path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert {node.op_type for node in inferred.graph.node} <= ALLOWED_OPS
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch
    if kind == "detector":  # ONNX Runtime's blocked convs need channel counts in whole blocks
        weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
        shapes = [weights[node.input[1]] for node in model.graph.node if node.op_type == "Conv"]
        assert shapes[0][1] == 3 and all(f % CHANNEL_BLOCK == 0 for f, _, _, _ in shapes)
        assert all(c % CHANNEL_BLOCK == 0 for _, c, _, _ in shapes[1:])


def test_onnx_cache_is_reused_and_rebuilt_when_corrupt(tmp_path: Path) -> None:
    first = cached_onnx(model_path("embedder"), "embedder", tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(model_path("embedder"), "embedder", tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert first.name.startswith("embedder-55533b28a95800a5")  # keyed by the model file's sha256
    first.write_bytes(b"not an onnx file")
    again = cached_onnx(model_path("embedder"), "embedder", tmp_path)
    onnx.checker.check_model(str(again))
    data = again.read_bytes()
    again.write_bytes(data[: len(data) // 2])  # an interrupted copy: still a file, not the graph
    assert cached_onnx(model_path("embedder"), "embedder", tmp_path).read_bytes() == data


def test_a_cache_hit_does_not_import_onnx(tmp_path: Path) -> None:
    """Start-up cost: a cached graph is found and checked by its sha256 alone (onnx takes seconds to import)."""
    cached_onnx(model_path("detector"), "detector", tmp_path)
    code = (
        "import sys\n"
        "from facestream.engines.models import model_path\n"
        "from facestream.engines.onnx_cache import cached_onnx\n"
        f"cached_onnx(model_path('detector'), 'detector', {str(tmp_path)!r})\n"
        "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.oracle
def test_dlib_oracle_on_unseen_faces(embedder: FaceEmbedder) -> None:
    """dlib-bin computes descriptors of faces it has not seen: flipped, rescaled, cropped and grey images."""
    dlib = require_dlib()
    import cv2

    recogniser = dlib.face_recognition_model_v1(str(model_path("embedder")))
    predictor = dlib.shape_predictor(str(model_path("landmarks")))
    cases = []
    base = load_rgb_as_dlib(DATA / "fr_examples/two_people.jpg")
    face = golden_images()["fr_examples/two_people.jpg"]["cnn_faces"][1]
    l, t, r, b, _ = face["rect"]
    cases.append((np.ascontiguousarray(base[:, ::-1]), (base.shape[1] - 1 - r, t, base.shape[1] - 1 - l, b)))
    scaled = cv2.resize(base, None, fx=0.63, fy=0.63, interpolation=cv2.INTER_AREA)
    cases.append((scaled, tuple(int(v * 0.63) for v in (l, t, r, b))))
    cropped = np.ascontiguousarray(base[max(t - 40, 0) : b + 25, max(l - 13, 0) : r + 60])
    cases.append((cropped, (l - max(l - 13, 0), t - max(t - 40, 0), r - max(l - 13, 0), b - max(t - 40, 0))))
    grey = cv2.cvtColor(load_rgb_as_dlib(DATA / "dlib_faces/Tom_Cruise_avp_2014_4.jpg"), cv2.COLOR_RGB2GRAY)
    tom = golden_images()["dlib_faces/Tom_Cruise_avp_2014_4.jpg"]["cnn_faces"][0]["rect"][:4]
    cases.append((np.repeat(grey[:, :, None], 3, axis=2), tuple(tom)))
    rng = np.random.default_rng(11)
    for image, box in cases:
        jitter = rng.integers(-4, 5, 4)
        box = tuple(int(v) for v in np.array(box) + jitter)
        shape = predictor(image, dlib.rectangle(*box))
        landmarks = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)])
        theirs = np.array(recogniser.compute_face_descriptor(image, shape))
        ours = embedder.embed_chips(extract_face_chips(image, landmarks[None]))[0]
        assert np.linalg.norm(ours - theirs) < 1e-4
