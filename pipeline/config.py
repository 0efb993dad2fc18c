"""Load config.yaml over built-in defaults; the shipped config.yaml documents the same defaults."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "models": {"detector": "", "landmarks": "", "embedder": ""},
    "cache_dir": "",
    "engine": {
        "backend": "auto",
        "threads": 0,
        "precision": "fp16",
        "workspace_mb": 1024,
        "detector_min_hw": [32, 32],
        "detector_opt_hw": [2645, 1304],
        "detector_max_hw": [5230, 2584],
    },
    "detector": {
        "upsample": 1,
        "threshold": 0.0,
        "max_image_pixels": 40_000_000,
        "max_tile_pixels": 4_000_000,
        "min_face_size": 0,
        "max_face_size": 0,
        "follow": "off",
        "scan_interval_s": 1.0,
        "scan_threads": 1,
        "region_margin": 0.25,
        "follow_miss_s": 0.3,
        "motion_threshold": 0.01,
        "motion_pixel_delta": 20.0,
    },
    "embedder": {"max_batch": 32, "embed_first": 16, "improve_factor": 1.5, "reembed_interval_s": 1.0},
    "gallery": {
        "path": "gallery.db",
        "distance_threshold": 0.6,
        "margin": 0.0,
        "negative_threshold": 0.5,
        "approximate_above": 100_000,
        "hnsw_m": 32,
        "hnsw_ef_search": 64,
        "gpu": "auto",
    },
    "enrolment": {"largest": False, "min_face_width": 50, "min_sharpness": 15.0},
    "pipeline": {
        "detect_workers": 1,
        "embed_workers": 1,
        "worker_threads": 0,
        "detect_every": 1,
        "scene_cut_threshold": 20.0,
        "embed_max_wait_ms": 10.0,
        "frame_hwm": 2,
        "faces_hwm": 64,
        "inflight_frames": 16,
        "resend_timeout_s": 30.0,
        "max_restarts": 5,
        "stats_interval_s": 1.0,
        "report_interval_s": 10.0,
        "gallery_refresh_s": 5.0,
        "live_reorder_ms": 200.0,
        "live_start_timeout_s": 120.0,
        "live_inflight": 0,
        "malloc_mmap_threshold_mb": 512,
        "shutdown_grace_s": 4.0,
        "run_dir": "",
        "endpoints": {
            "frames": "",
            "faces_in": "",
            "faces_out": "",
            "descriptors": "",
            "sink_in": "",
            "acks": "",
            "events": "",
            "stats": "",
            "control": "",
            "preview": "",
        },
    },
    "sources": {
        "live_queue": 2,
        "image_fps": 25.0,
        "max_frames": 0,
        "open_attempts": 3,
        "reconnect_initial_s": 0.5,
        "reconnect_max_s": 30.0,
        "max_reconnects": 0,
    },
    "tracker": {
        "iou_threshold": 0.3,
        "max_age": 0,
        "max_age_s": 0.5,
        "live_max_age_s": 3.0,
        "decision": "mean",
        "best_faces": 16,
        "min_votes": 1,
        "switch_votes": 3,
        "switch_ratio": 1.5,
        "vote_decay": 0.9,
        "min_face_size": 32.0,
        "min_sharpness": 15.0,
        "min_score": 0.3,
        "scene_cut_distance": 0.65,
    },
    "kiosk": {
        "enabled": False,
        "k": 3,
        "n": 5,
        "margin": 0.05,
        "threshold": 0.55,
        "max_conflicts": 0,
        "timeout_s": 10.0,
    },
    "outputs": {"live_video_fps": 25.0, "video_codec": "mp4v", "event_descriptors": False},
    "web": {
        "address": "127.0.0.1:8080",
        "token": "",
        "preview_fps": 5.0,
        "preview_max_width": 960,
        "jpeg_quality": 80,
        "history": 200,
    },
    "security": {
        "curve": "auto",
        "server_secret_key": "",
        "server_public_key": "",
        "client_secret_key": "",
        "allowed_clients_dir": "",
    },
}


class ConfigError(ValueError):
    pass


def _merge(base: dict[str, Any], override: dict[str, Any], where: str) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping, got {value!r}")
            merged[key] = _merge(base[key], value, f"{where}.{key}")
        elif value is None:
            merged[key] = base[key]
        elif isinstance(base[key], bool) != isinstance(value, bool) or (
            isinstance(base[key], (int, float)) and not isinstance(value, (int, float))
        ):
            raise ConfigError(f"{where}.{key}: expected a {type(base[key]).__name__}, got {value!r}")
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Defaults, overlaid with `path` (or ./config.yaml when it exists and no path is given)."""
    if path is None:
        path = Path("config.yaml") if Path("config.yaml").is_file() else None
    if path is None:
        return copy.deepcopy(DEFAULTS)
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return _merge(DEFAULTS, loaded, str(path))
