"""`facestream engines prepare` (engines/warmup.py): after it, the API's paths run on machine code it built.

With a C compiler (the default), the loops are one C library: after the warm-up, the library's paths run
without importing numba at all. Where numba runs them instead (no compiler, or FACESTREAM_LOOPS=numba),
numba compiles one version of a kernel per argument type (dtype, dimensions, memory layout), so the check
is on those versions: a fresh process runs the warm-up, another runs the library the way users and the
pipeline do (CNN and HOG on other photos, colour, grey and a BGR->RGB view, batches, regions, the tiled
path, 68 points, face_recognition's API); every kernel version the second used must be one the first made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import DATA

FACESTREAM = str(Path(sys.executable).parent / "facestream")

SIGNATURES = """
import json, numba
from facestream.engines import dlib_floats, hog_kernels, pyramid_kernels

def signatures():
    found = {}
    for module in (hog_kernels, pyramid_kernels, dlib_floats):
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher):
                found[f"{module.__name__}.{name}"] = sorted(str(s) for s in value.signatures)
    return found
"""

PREPARE = SIGNATURES + """
from facestream.engines.warmup import prepare
prepare()
print(json.dumps(signatures()))
"""

WORKLOAD = f"""
import numpy as np
import facestream as fs
from facestream.compat import face_recognition as fr
from facestream.engines.detector import FaceDetector
from facestream.engines.models import model_path
from facestream.engines.cachedir import default_cache_dir

small = fs.load_image({str(DATA / "fr_examples/obama-480p.jpg")!r})
photo = np.ascontiguousarray(small[::2, ::2])
for image in (small, photo[:, :, ::-1], fs.api.to_grey(photo)):  # RGB, a BGR->RGB view, grey
    for model, upsample in (("cnn", 0), ("cnn", 1), ("hog", 0), ("hog", 1)):
        fs.detect(image, model, upsample)
faces = fs.analyze(photo, landmark_model=68)
with FaceDetector.from_file(model_path("detector"), default_cache_dir(), max_tile_pixels=150_000) as detector:
    detector.detect(small, 0)  # tiled
    detector.detect_regions(small, faces.boxes.astype(float) * 2, 1)
with FaceDetector.from_file(model_path("detector"), default_cache_dir()) as detector:
    detector.detect_regions(small, np.array([[10.0, 10.0, 60.0, 60.0]]), 1)
fr.batch_face_locations([photo, photo], 1)
fr.face_encodings(photo, model="large")
"""
USE = SIGNATURES + WORKLOAD + """
print(json.dumps(signatures()))
"""


def run(code: str, loops: str = "auto") -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FACESTREAM_LOOPS": loops})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_after_prepare_the_library_runs_without_numba() -> None:
    run("import json; from facestream.engines.warmup import prepare; prepare(); print(json.dumps({}))")
    found = run(WORKLOAD + "import json, sys; from facestream.engines.loops import loops\n"
                "print(json.dumps({'numba': 'numba' in sys.modules, 'loops': loops().kind}))")  # fmt: skip
    assert found == {"numba": False, "loops": "C"}


def test_with_numba_after_prepare_the_library_runs_only_kernel_versions_it_compiled() -> None:
    prepared, used = run(PREPARE, "numba"), run(USE, "numba")
    assert used.keys() == prepared.keys() and len(used) >= 8, sorted(used)
    assert any(used.values()), "the workload ran no kernel: the check proves nothing"
    missing = {name: sorted(set(sigs) - set(prepared[name])) for name, sigs in used.items()}
    assert not any(missing.values()), f"kernel versions `engines prepare` does not compile: {missing}"


def test_the_command_reports_its_steps_as_json() -> None:
    done = subprocess.run([FACESTREAM, "engines", "prepare", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert [step["step"].split(":")[0] for step in record["steps"]] == [
        "CNN detector", "CNN detector", "HOG detector", "5-point shape predictor", "68-point shape predictor",
        "embedder"]  # fmt: skip
    assert Path(record["cache"]).is_dir() and record["seconds"] >= 0
    assert record["loops"] == "C" and Path(record["loops_library"]).is_file()
