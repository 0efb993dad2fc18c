"""A non-editable install runs its stage processes from the installed package, whatever the working directory.

Inside the repository, `python -m ...` would put the working directory first on sys.path, and the checkout's
facestream/ folder (only the top-level __init__.py) would shadow the installed package in every stage
process: the run would end with 0 frames processed. This installs the project (not editable) into a
fresh virtual environment and runs `facestream run` from inside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent
CLIP = ROOT / "tests" / "data" / "video" / "short_hamilton_clip.mp4"
SOURCES = ["pyproject.toml", "README.md", "facestream", "engines", "enroll", "pipeline"]


def test_run_from_inside_the_checkout_uses_the_installed_package(tmp_path: Path) -> None:
    # A copy of the sources to build from, so the build leaves nothing in the checkout itself.
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())  # fmt: skip
    # The dependencies (and pip, setuptools) come from the test environment's site-packages, added as a plain
    # path: its .pth files (the editable install's finder) are not run, so only the new install is facestream.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FACESTREAM_CONFIG")}
    # Built as a wheel first (what `pip install .` does), so its build log and its contents can be checked.
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [str(python), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    # setuptools' deprecation and "importable but absent from `packages`" warnings: none.
    assert "Warning" not in build.stdout + build.stderr, build.stdout + build.stderr
    (wheel,) = wheels.glob("facestream-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for folder, files in (("facestream/pipeline/web/static", ["index.html", "app.js"]),
                          ("facestream/engines/data", ["dlib_frontal_face_detector.svm",
                                                       "dlib_frontal_face_detector.txt", "warmup-face.jpg",
                                                       "warmup-face.txt"]),
                          ("facestream/engines/csrc",
                           ["hog_loops.c", "hog_responses.c", "pyramid_loops.c", "chip_loops.c",
                            "row_pairs.h"])):  # fmt: skip
        assert {f"{folder}/{name}" for name in files} <= names, sorted(names)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--ignore-installed",
         str(wheel)], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    where = subprocess.run([str(python), "-c", "import facestream.pipeline, sys; print(facestream.pipeline.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr

    detections = tmp_path / "detections.jsonl"
    result = subprocess.run(
        [str(venv / "bin" / "facestream"), "run", "--source", str(CLIP), "--max-frames", "3", "--no-progress",
         "--gallery", str(tmp_path / "gallery.db"), "--detections", str(detections)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert (ROOT / "facestream" / "__init__.py").is_file()  # the folder that used to shadow the package
    assert result.returncode == 0, result.stderr[-3000:]
    frames = [json.loads(line) for line in detections.read_text().splitlines()]
    assert [frame["frame_index"] for frame in frames] == [0, 1, 2]
    assert all(frame["faces"] for frame in frames)  # Lin-Manuel Miranda is on screen in frames 0-19
