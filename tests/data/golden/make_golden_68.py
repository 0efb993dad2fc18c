#!/usr/bin/env python3
"""Generate dlib's 68-point golden outputs: golden/dlib-20.0.1-68.json.

Usage (with dlib-bin 20.0.1.post1 + face_recognition_models 0.3.0 installed):
    python make_golden_68.py

For every image of the data pack (loaded with dlib.load_rgb_image, as make_golden.py does):
  * boxes: every CNN rect of golden/dlib-20.0.1.json (upsample 1), plus the HOG rects of
    dlib.get_frontal_face_detector() at upsample 0 and 1 (all of them: the HOG detector is cheap)
  * landmarks_68: shape_predictor_68_face_landmarks.dat on the raw (untrimmed) box
  * chip_details: dlib.get_face_chip_details(shape68, 150, 0.25)
  * chip_sha256:  sha256 of dlib.get_face_chip(img, shape68, size=150, padding=0.25)
  * descriptor:   face_recognition_model_v1.compute_face_descriptor(img, shape68) (num_jitters 0)
The 68-point model is trained on iBUG 300-W (not for commercial use); this file only records
its outputs for tests.
"""

import glob
import hashlib
import json
import os

import dlib
import face_recognition_models as frm
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)
IMG_EXT = (".jpg", ".jpeg", ".png")


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def face_record(sp68, rec, img, rect):
    shape = sp68(img, rect)
    cd = dlib.get_face_chip_details(shape, 150, 0.25)
    chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
    desc = np.array(rec.compute_face_descriptor(img, shape))
    return {
        "box": [rect.left(), rect.top(), rect.right(), rect.bottom()],
        "landmarks_68": [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)],
        "chip_details": {"rect": [cd.rect.left(), cd.rect.top(), cd.rect.right(), cd.rect.bottom()],
                         "angle": float(cd.angle)},
        "chip_sha256": hashlib.sha256(np.ascontiguousarray(chip).tobytes()).hexdigest(),
        "descriptor": [round(float(v), 8) for v in desc],
    }


def main():
    sp68_path = frm.pose_predictor_model_location()
    sp68 = dlib.shape_predictor(sp68_path)
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    hog = dlib.get_frontal_face_detector()
    golden = json.load(open(os.path.join(HERE, "dlib-20.0.1.json")))["images"]
    paths = sorted(p for p in glob.glob(os.path.join(DATA, "**", "*"), recursive=True)
                   if p.lower().endswith(IMG_EXT) and "/golden/" not in p)
    out = {
        "dlib_version": dlib.__version__,
        "dlib_package": "dlib-bin 20.0.1.post1 (manylinux wheel)",
        "model": {"file": os.path.basename(sp68_path), "sha256": sha256_file(sp68_path),
                  "licence": "trained on iBUG 300-W: not for commercial use"},
        "conventions": "box [left, top, right, bottom] (dlib inclusive, untrimmed); landmarks_68 68 x [x, y] "
                       "(iBUG 300-W order); chip from get_face_chip(img, shape68, 150, 0.25); descriptor from "
                       "compute_face_descriptor(img, shape68); images loaded with dlib.load_rgb_image",
        "images": {},
    }
    for p in paths:
        rel = os.path.relpath(p, DATA)
        img = dlib.load_rgb_image(p)
        entry = {"file_sha256": sha256_file(p), "cnn_faces": [], "hog_faces": {"0": [], "1": []}}
        for face in golden.get(rel, {}).get("cnn_faces", []):
            left, top, right, bottom = face["rect"][:4]
            entry["cnn_faces"].append(face_record(sp68, rec, img, dlib.rectangle(left, top, right, bottom)))
        for upsample in (0, 1):
            rects, scores, index = hog.run(img, upsample, 0.0)
            for rect, score, weight in zip(rects, scores, index):
                record = face_record(sp68, rec, img, rect)
                record["score"] = float(score)
                record["weight_index"] = int(weight)
                entry["hog_faces"][str(upsample)].append(record)
        out["images"][rel] = entry
        print(f"{rel}: cnn={len(entry['cnn_faces'])} hog0={len(entry['hog_faces']['0'])} "
              f"hog1={len(entry['hog_faces']['1'])}", flush=True)
    with open(os.path.join(HERE, "dlib-20.0.1-68.json"), "w") as f:
        json.dump(out, f, indent=None, separators=(",", ":"))


if __name__ == "__main__":
    main()
