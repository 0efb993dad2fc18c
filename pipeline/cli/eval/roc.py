"""The ROC picture of `eval pairs --roc`, drawn with OpenCV."""

from __future__ import annotations

import math

import numpy as np


def draw_roc(far: np.ndarray, tar: np.ndarray, points: list[tuple[float, float, str]], title: str,
             size: tuple[int, int] = (720, 560)) -> np.ndarray:  # fmt: skip
    """BGR image: TAR against FAR on a log axis, with marked operating points (far, tar, label) and a legend.

    FAR 0 cannot sit on a log axis: the curve starts at the left edge (one decade below the smallest
    non-zero FAR) with the best TAR reached at or below that FAR.
    """
    import cv2

    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    image = np.full((height, width, 3), 255, np.uint8)
    positive = far[far > 0]
    low_exp = min(math.floor(math.log10(positive.min())) if len(positive) else -3, -2)
    floor_far = 10.0**low_exp
    inside = far > floor_far
    start_tar = float(np.max(tar[~inside])) if (~inside).any() else 0.0
    curve_far = np.concatenate([[floor_far], far[inside]])
    curve_tar = np.concatenate([[start_tar], tar[inside]])
    tar_low = min(math.floor(float(np.nanmin(curve_tar)) * 10) / 10, 0.9)
    # up the left edge first: below the axis' smallest FAR, TAR rises from 0 to start_tar
    curve_far = np.concatenate([[floor_far], curve_far])
    curve_tar = np.concatenate([[0.0], curve_tar])

    def to_px(f: np.ndarray, t: np.ndarray) -> np.ndarray:
        x = (np.log10(np.clip(f, floor_far, 1.0)) - low_exp) / -low_exp
        y = (np.clip(t, tar_low, 1.0) - tar_low) / (1 - tar_low)
        return np.stack([left + x * (width - left - right), top + (1 - y) * (height - top - bottom)], axis=1)

    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (210, 210, 210), (0, 0, 0)
    for exp in range(low_exp, 1):
        x = int(to_px(np.array([10.0**exp]), np.array([1.0]))[0, 0])
        cv2.line(image, (x, top), (x, height - bottom), grey, 1)
        cv2.putText(image, f"1e{exp}", (x - 18, height - bottom + 20), font, 0.45, black, 1, cv2.LINE_AA)
    step = 0.05 if tar_low >= 0.5 else 0.1
    for tick in np.arange(tar_low, 1.0 + step / 2, step):
        y = int(to_px(np.array([1.0]), np.array([tick]))[0, 1])
        cv2.line(image, (left, y), (width - right, y), grey, 1)
        cv2.putText(image, f"{tick:.2f}", (left - 45, y + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), black, 1)
    # a step curve: at each threshold TAR rises at the FAR reached so far, then FAR grows at that TAR
    steps_far = np.repeat(curve_far, 2)[1:]
    steps_tar = np.repeat(curve_tar, 2)[:-1]
    curve = to_px(steps_far, steps_tar).round().astype(np.int32)
    cv2.polylines(image, [curve.reshape(-1, 1, 2)], False, (180, 90, 20), 2, cv2.LINE_AA)
    colours = [(40, 40, 220), (30, 150, 30), (160, 40, 160), (0, 140, 230)]
    for i, (f, t, label) in enumerate(points):
        colour = colours[i % len(colours)]
        if math.isfinite(f) and math.isfinite(t):
            x, y = to_px(np.array([f]), np.array([t]))[0].round().astype(int)
            cv2.circle(image, (int(x), int(y)), 6, colour, -1, cv2.LINE_AA)
        legend_y = height - bottom - 15 - 22 * (len(points) - 1 - i)
        cv2.circle(image, (width - right - 300, legend_y - 4), 6, colour, -1, cv2.LINE_AA)
        cv2.putText(image, label, (width - right - 288, legend_y), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 25), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(image, "false accept rate (log)", (width // 2 - 80, height - 12), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(image, "TAR", (8, top + 15), font, 0.5, black, 1, cv2.LINE_AA)
    return image
