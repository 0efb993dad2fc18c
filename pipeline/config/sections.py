"""The sections of the configuration: one dataclass per part of facestream (`models:`, `engine:`, ...), each
key with its default, its documentation and what values are allowed (`setting`, `section`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...enroll.records import MAX_THRESHOLD
from .schema import section, setting


@dataclass
class ModelsConfig:
    """The `models:` section (keys and their meaning: config.yaml)."""

    detector: str = setting("", "mmod_human_face_detector.dat")
    landmarks: str = setting("", "shape_predictor_5_face_landmarks.dat")
    embedder: str = setting("", "dlib_face_recognition_resnet_model_v1.dat")


@dataclass
class EngineConfig:
    """The `engine:` section (keys and their meaning: config.yaml)."""

    backend: str = setting(
        "auto",
        "auto: TensorRT when tensorrt + pycuda import and a CUDA device is present, else\n"
        "ONNX Runtime on the CPU (the choice and why are logged); tensorrt | onnxruntime",
        choices=("auto", "tensorrt", "onnxruntime"),
    )
    threads: int = setting(0, "ONNX Runtime intra-op threads; 0 = all cores", ge=0)
    precision: str = setting(
        "auto",
        "TensorRT engines: auto (each network at the precision `facestream engines check`\n"
        "chose: engines/precision.py DEFAULT_PRECISION) | fp16 | fp32",
        choices=("auto", "fp16", "fp32"),
    )
    workspace_mb: int = setting(1024, "TensorRT builder workspace", ge=1)
    detector_min_hw: list[int] = setting([32, 32], "TensorRT detector profile: tiled-pyramid height, width (min ...")
    detector_opt_hw: list[int] = setting(
        [2645, 1304], "... optimised for: 640x360 at upsample 1 (720p at upsample 0 ~ the same)"
    )
    detector_max_hw: list[int] = setting(
        [5230, 2584], "... max: 720p at upsample 1, 1080p at 0); larger frames run on ONNX Runtime"
    )


@dataclass
class DetectorConfig:
    """The `detector:` section (keys and their meaning: config.yaml)."""

    upsample: int = setting(1, "dlib's upsample_num_times: 1 finds faces down to ~40 px, 0 down to ~80 px", ge=0, le=4)
    threshold: float = setting(0.0, "dlib's adjust_threshold: keep detections scoring above this")
    max_image_pixels: int = setting(40_000_000, "refuse images whose declared size is larger, before decoding", ge=1)
    max_work_pixels: int = setting(
        40_000_000,
        "refuse photos (analyze, identify, enroll) whose width x height x 4^upsample is\n"
        "larger, before decoding: detector memory grows with it. 40 M admits a 6000x6000\n"
        "photo at upsample 0 (= max_image_pixels); web uploads: web.upload_max_work_pixels",
        ge=1,
    )

    max_tile_pixels: int = setting(
        4_000_000,
        "input-tensor pixels per network call: larger pyramids run in exact overlapping\n"
        "tiles (same boxes and scores), so peak memory stays under 1 GB for any image\n"
        "that max_image_pixels admits",
        ge=1,
    )
    min_face_size: float = setting(
        0.0,
        "px, 0 = no limit. > 0 also chooses the upsampling (detector.upsample is then\n"
        "ignored): the fewest steps whose smallest face (80 px at 0, 40 at 1, 20 at 2) is\n"
        "at most this; e.g. a kiosk with faces >= 120 px runs at upsample 0",
        ge=0,
    )
    max_face_size: float = setting(
        0.0, "px, 0 = no limit. Pyramid levels that cannot give faces in range are skipped", ge=0
    )
    follow: str = setting(
        "off",
        "followers and scans (pipeline/domain/follow.py): off = full-frame detection on every\n"
        "frame; live = on live streams, follow known faces with region detection every\n"
        "frame and scan the whole frame on a schedule; all = every stream (files scan\n"
        "synchronously, so results do not depend on timing)",
        choices=("off", "live", "all"),
    )
    scan_interval_s: float = setting(
        1.0, "a full-frame scan at least this often (wall clock live, media time files)", gt=0
    )
    scan_threads: int = setting(1, "ONNX Runtime threads of the background scan (the followers get the rest)", ge=1)
    scan_nice: int = setting(
        10, "niceness added to the background scan's thread, so the per-frame work wins\n"
        "the cores when both want them (Linux; 0 = same priority)", ge=0, le=19,
    )  # fmt: skip
    region_margin: float = setting(
        0.25, "a followed face's region: its predicted box grown by this share per side", ge=0, le=4
    )
    follow_miss_s: float = setting(0.3, "a followed face its region no longer finds is dropped after this long "
                                   "(also the longest its motion is extrapolated)", ge=0)
    motion_threshold: float = setting(
        0.01, "scan at once when this share of the picture outside followed faces moved", ge=0, le=1
    )
    motion_pixel_delta: float = setting(
        20.0, "... by more than this many grey levels (a 96 px wide blurred grey image)", ge=0, le=255
    )


@dataclass
class EmbedderConfig:
    """The `embedder:` section (keys and their meaning: config.yaml)."""

    max_batch: int = setting(32, "faces per inference call", ge=1)
    embed_first: int = setting(
        16,
        "with detector.follow on, a followed face is embedded while it has fewer than\n"
        "this many embedded faces (identity being decided), when its quality weight is\n"
        "improve_factor x its best so far, or reembed_interval_s after its last\n"
        "embedding; otherwise it goes without a descriptor",
        ge=0,
    )
    improve_factor: float = setting(1.5, "see embed_first", ge=1)
    reembed_interval_s: float = setting(1.0, "see embed_first", ge=0)


_DISTANCE_MAX = MAX_THRESHOLD  # a dlib descriptor distance above this would name almost anyone as anyone


@dataclass
class GalleryConfig:
    """The `gallery:` section (keys and their meaning: config.yaml)."""

    path: str = setting("gallery.db", "SQLite file (created 0600: descriptors are biometric data)")
    distance_threshold: float = setting(
        0.6, "a face is a person when its descriptor is at most this far (dlib's 0.6)", gt=0, le=_DISTANCE_MAX
    )
    margin: float = setting(0.0, "best person must beat the runner-up person by this much, else unknown",
                            ge=0, le=_DISTANCE_MAX)  # fmt: skip
    negative_threshold: float = setting(
        0.5, 'a face this close to a "NOT this person" example rejects that person', ge=0, le=_DISTANCE_MAX
    )
    approximate_above: int = setting(100_000, "samples; above this an HNSW index replaces exact search", ge=0)
    hnsw_m: int = setting(32, "HNSW graph degree", ge=2)
    hnsw_ef_search: int = setting(64, "recall@1 0.9965 at 1M samples, 1.5 ms p99 (bench/gallery.py)", ge=1)
    gpu: bool | str = setting(
        False,
        "exact search on the GPU (faiss-gpu): false (default: the CPU answers a gallery of\n"
        "100k samples in ~3 ms), true (warns when no GPU), auto (the GPU when there is one)",
        choices=(False, True, "auto"),
    )


@dataclass
class UnknownsConfig:
    """The `unknowns:` section (keys and their meaning: config.yaml)."""

    cluster_threshold: float = setting(
        0.5,
        "unknown faces closer than this are linked (`unknowns`, the web page): 0.5 as in\n"
        "dlib's clustering example; at 0.6 one link chains two people into one",
        gt=0,
        le=_DISTANCE_MAX,
    )


@dataclass
class EnrolmentConfig:
    """The `enrolment:` section (keys and their meaning: config.yaml)."""

    largest: bool = setting(False, "several faces in a photo: refuse it (false) or take the largest (true)")
    min_face_width: int = setting(50, "px; smaller faces give unreliable descriptors", ge=0)
    min_sharpness: float = setting(15.0, "variance of the Laplacian of the 150x150 chip; lower = blurred", ge=0)


@dataclass
class EndpointsConfig:
    """The `pipeline.endpoints:` section (keys and their meaning: config.yaml)."""

    frames: str = setting("", "")
    faces_in: str = setting("", "")
    faces_out: str = setting("", "")
    descriptors: str = setting("", "")
    sink_in: str = setting("", "")
    acks: str = setting("", "")
    events: str = setting("", "identity events as JSON (PUB): subscribe here from other programs")
    stats: str = setting("", "")
    control: str = setting("", "")
    preview: str = setting(
        "",
        "annotated JPEG frames and unknown faces with descriptors for the web view\n"
        "(PUB, only with `run --web` / `--preview`): private, like the run directory",
    )

    def items(self) -> list[tuple[str, str]]:
        """(name, endpoint) pairs, in schema order."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


@dataclass
class PipelineConfig:
    """The `pipeline:` section (keys and their meaning: config.yaml)."""

    detect_workers: int = setting(1, "detect+align processes (`facestream run --workers N`)", ge=1)
    embed_workers: int = setting(1, "embed processes (one embeds ~300 faces/s on one core)", ge=1)
    worker_threads: int = setting(0, "ONNX Runtime threads per worker; 0 = cores / detect_workers (embed: 1)", ge=0)
    detect_every: int = setting(1, "run the detector on every k-th frame; the tracker carries boxes between", ge=1)
    scene_cut_threshold: float = setting(
        20.0,
        "... except on a frame that starts a new scene: mean grey-level change of a\n"
        "64x36 thumbnail above this (demo clip: cuts 27.7-30.5, motion <= 13.6); 0 = off",
        ge=0,
    )
    embed_max_wait_ms: float = setting(
        10.0,
        "embed batches faces across frames and streams up to embedder.max_batch\n"
        "faces, waiting at most this long for more after the first",
        ge=0,
    )
    frame_hwm: int = setting(2, "ZeroMQ high-water mark (messages) on frame sockets: back-pressure", ge=1)
    faces_hwm: int = setting(64, "... and on face / descriptor sockets", ge=1)
    inflight_frames: int = setting(
        16, "file sources: frames past the oldest unfinished one that may be in flight", ge=1
    )
    resend_timeout_s: float = setting(
        30.0,
        "file sources: re-send a frame not finished after this long (at least\n"
        "4x the recent frame latency); a dead local worker triggers it at once",
        gt=0,
    )
    max_restarts: int = setting(5, "restarts of one worker slot before the run gives up", ge=0)
    stats_interval_s: float = setting(1.0, "how often each process reports its counters", gt=0)
    report_interval_s: float = setting(10.0, "how often throughput, latency and queue depths are printed", gt=0)
    gallery_refresh_s: float = setting(5.0, "how often the sink picks up enrolments and removals; 0 = never", ge=0)
    live_reorder_ms: float = setting(
        200.0, "live sources, several workers: how long the sink holds a result to reorder it", ge=0
    )
    live_start_timeout_s: float = setting(
        120.0, "live sources start capturing when the workers are ready, at most this late", gt=0
    )
    live_inflight: int = setting(
        0,
        "live sources: frames of each stream at the detectors at once (the newest goes\n"
        "when one is free); 0 = one per local detect worker. Raise it when remote\nworkers join",
        ge=0,
    )
    shutdown_grace_s: float = setting(
        4.0, "after Ctrl-C / SIGTERM, processes still running after this are killed", gt=0
    )
    malloc_mmap_threshold_mb: float = setting(
        512.0,
        "glibc's fixed mmap threshold for the stage processes (MALLOC_MMAP_THRESHOLD_;\n"
        "the environment's own value wins). Fixed, the heap does not creep; large, the\n"
        "detector's ~40 MB of arrays a frame reuse the heap instead of being mapped\n"
        "and page-faulted afresh (0.25 MB doubled the detection time). 0 = glibc default",
        ge=0,
        le=2048,
    )
    run_dir: str = setting("", 'private directory (0700) for ipc sockets; "" = a new temporary one per run')
    endpoints: EndpointsConfig = section(
        EndpointsConfig,
        '"" = ipc://<run_dir>/<name>; tcp://ADDRESS:PORT lets workers on other machines join with\n'
        "`facestream stage detect|embed` (use an address of the machine that binds, not tcp://*).\n"
        'Who binds what: pipeline/runtime/stages.py, README "Running the pipeline"',
    )


@dataclass
class SourcesConfig:
    """The `sources:` section (keys and their meaning: config.yaml)."""

    live_queue: int = setting(
        2, "live sources (cameras, URLs): frames buffered; when full the oldest is dropped", ge=1
    )
    image_fps: float = setting(25.0, "image folders: frame rate for timestamps and the annotated video", gt=0)
    max_frames: int = setting(0, "stop each source after this many frames; 0 = all", ge=0)
    open_attempts: int = setting(
        0,
        "live cameras/URLs: tries at the first opening before giving up; 0 = retry\n"
        "(with the back-off below) for as long as the run lasts",
        ge=0,
    )
    reconnect_initial_s: float = setting(0.5, "live sources: back-off after a loss, doubling ...", gt=0)
    reconnect_max_s: float = setting(30.0, "... up to this", gt=0)
    max_reconnects: int = setting(0, "live sources: failed reopenings in a row before giving up; 0 = never", ge=0)


@dataclass
class TrackerConfig:
    """The `tracker:` section (keys and their meaning: config.yaml)."""

    iou_threshold: float = setting(
        0.3, "a detection continues a track when it overlaps its predicted box this much", gt=0, le=1
    )
    max_age_s: float = setting(0.5, "seconds a track survives unseen, file streams (media time)", ge=0)
    live_max_age_s: float = setting(
        3.0, "... live streams (wall-clock time: dropped frames do not age a track)", ge=0
    )
    max_age: int = setting(
        0,
        "old key, frames: when > 0, ages count frames as before (max_age frames, at least\n"
        "pipeline.detect_every) and max_age_s / live_max_age_s are not used",
        ge=0,
    )
    decision: str = setting(
        "mean",
        "mean: the match of the mean descriptor of the track's best faces decides;\n"
        "vote: a weighted vote over per-face matches (pipeline/domain/tracker.py)",
        choices=("mean", "vote"),
    )
    best_faces: int = setting(
        16, "mean: how many of a track's best faces (by the quality gate) are averaged", ge=1
    )
    min_votes: int = setting(1, "observations before a track gets its first identity", ge=1)
    switch_votes: int = setting(3, "vote: observations another identity needs to take over ...", ge=1)
    switch_ratio: float = setting(1.5, "vote: ... and this many times the current identity's vote weight", ge=1)
    vote_decay: float = setting(0.9, "vote: each observation multiplies older votes by this", gt=0, le=1)
    min_face_size: float = setting(32.0, "px; smaller faces do not vote", ge=0)
    min_sharpness: float = setting(15.0, "variance of the chip's Laplacian; blurrier faces do not vote", ge=0)
    min_score: float = setting(0.3, "detector score below which faces do not vote")
    scene_cut_distance: float = setting(
        0.65,
        "a face farther than this (descriptor distance) from the last face of the track\n"
        "it would continue means a scene cut: every track ends there; 0 = off.\n"
        "Demo clip: same person frame to frame <= 0.44, the cut at frame 211: 0.79",
        ge=0,
        le=_DISTANCE_MAX * 2,
    )


@dataclass
class KioskConfig:
    """The `kiosk:` section (keys and their meaning: config.yaml)."""

    enabled: bool = setting(False, "emit access_decision events (granted/denied with the evidence)")
    k: int = setting(3, "frames that must match the same person ...", ge=1)
    n: int = setting(5, "... among the track's last n frames", ge=1)
    margin: float = setting(0.05, "the runner-up person must be at least this much farther on each such frame",
                            ge=0, le=_DISTANCE_MAX)  # fmt: skip
    threshold: float = setting(
        0.55,
        "cap on every person's distance threshold; 0 = the gallery's as they are.\n"
        "Data pack: nearest impostor 0.598 (a bald_guys.jpg face vs Lin-Manuel\n"
        "Miranda), Lin-Manuel's own demo-clip frames 0.44-0.59",
        ge=0,
        le=_DISTANCE_MAX,
    )
    max_conflicts: int = setting(0, "frames in the window that may vote for someone else (0: none)", ge=0)
    timeout_s: float = setting(10.0, "denied when no grant this long after the track's first frame", gt=0)


@dataclass
class MqttConfig:
    """The `outputs.mqtt:` section (pipeline/integrations/mqtt.py; README "Integrations")."""

    url: str = setting("", 'mqtt://host:1883 or mqtts://host:8883 (TLS); "" = off; `run --mqtt URL` sets it')
    username: str = setting("", "or FACESTREAM_MQTT_USERNAME")
    password: str = setting("", "better FACESTREAM_MQTT_PASSWORD in the environment; never logged")
    prefix: str = setting("facestream", "topics: <prefix>/<stream>/events, .../access, .../people/<name>, "
                                         "<prefix>/availability")  # fmt: skip
    client_id: str = setting("", '"" = facestream-<pid>')
    qos: int = setting(1, "MQTT quality of service of every message", ge=0, le=2)
    keepalive_s: int = setting(30, "seconds between keep-alive pings", ge=1)
    queue: int = setting(10000, "messages held while the broker is away (QoS 1, re-sent on reconnect); more: "
                                "dropped, counted", ge=1)  # fmt: skip
    reconnect_min_s: float = setting(1.0, "reconnect back-off: from this, doubling up to reconnect_max_s", gt=0)
    reconnect_max_s: float = setting(60.0, "the longest wait between reconnect attempts", gt=0)
    presence_off_s: float = setting(30.0, "a person's retained presence turns OFF this long after their last "
                                          "track ended", ge=0)  # fmt: skip
    ca_file: str = setting("", 'mqtts://: CA bundle of the broker ("" = the system\'s)')
    discovery: bool = setting(False, "Home Assistant MQTT discovery: a sensor per stream, a binary sensor per person")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery topic prefix")
    gallery_poll_s: float = setting(5.0, "how often discovery re-reads the gallery's people (enrol / remove)", gt=0)
    snapshots: bool = setting(False, "true: the annotated frame of each identification, JPEG, on "
                                     "<prefix>/<stream>/snapshot\n(retained; the sink then draws frames at "
                                     "web.preview_fps, as for the web view)")  # fmt: skip


@dataclass
class OutputsConfig:
    """The `outputs:` section (keys and their meaning: config.yaml)."""

    live_video_fps: float = setting(25.0, "frame rate of annotated video from live sources", gt=0)
    video_codec: str = setting("mp4v", "FourCC for --output")
    event_descriptors: bool = setting(
        False,
        "true: track_identified events carry the descriptor that decided (biometric\n"
        "data, also on the PUB socket: only on trusted links)",
    )
    mqtt: MqttConfig = section(MqttConfig, "events on an MQTT broker (pipeline/integrations/mqtt.py)")
    webhooks: list[dict] = setting(
        [],
        "[{url, events: [track_identified], secret or secret_env, timeout_s: 5, retries: 3,\n"
        "  backoff_s: 1}]: POST each chosen event as JSON, X-Facestream-Signature: sha256=HMAC",
    )
    webhook_queue: int = setting(1000, "events waiting per webhook; more: the oldest dropped, counted", ge=1)
    delivery_timeout_s: float = setting(
        5.0, "at the end of a run, how long MQTT and webhooks may take to deliver what they hold", ge=0
    )


@dataclass
class MetricsConfig:
    """The `metrics:` section (pipeline/integrations/metrics.py)."""

    address: str = setting("", 'HOST:PORT to serve /metrics on without the web view ("" = off)')
    textfile: str = setting("", "also write them to this file every second and at the end (node_exporter textfile)")
    max_people: int = setting(100, "identifications_total gets a label per person up to this many per stream", ge=0)


@dataclass
class WebConfig:
    """The `web:` section (keys and their meaning: config.yaml)."""

    address: str = setting(
        "127.0.0.1:8080", "HOST:PORT to serve on; another host than 127.0.0.1/localhost/::1 needs a token"
    )
    token: str = setting("", "required on every request when set (better: FACESTREAM_WEB_TOKEN in the environment)")
    preview_fps: float = setting(5.0, "annotated frames a second per stream sent to the page; 0 = none", ge=0)
    preview_max_width: int = setting(960, "px; wider frames are scaled down for the page", ge=16)
    jpeg_quality: int = setting(80, "of those frames", ge=1, le=100)
    history: int = setting(200, "events the page gets when it (re)connects", ge=0)
    upload_max_work_pixels: int = setting(
        16_000_000,
        "photo uploads: width x height x 4^detector.upsample above this (or above\n"
        "detector.max_work_pixels) is refused before decoding; the upload process\n"
        "peaked at 2.4 GB at 15.8 M",
        ge=1,
    )


@dataclass
class SecurityConfig:
    """The `security:` section (keys and their meaning: config.yaml)."""

    curve: str = setting(
        "auto",
        "ZeroMQ CURVE (encrypted, authenticated): auto = on when any endpoint is tcp://;\n"
        "required = always; disabled = never (a warning when tcp:// is used)",
        choices=("auto", "required", "disabled"),
    )
    server_secret_key: str = setting("", "the machine running `facestream run`: its .key_secret file (0600)")
    server_public_key: str = setting("", "a worker machine: the server's public .key file")
    client_secret_key: str = setting(
        "", "a worker machine: its own .key_secret file (the run's own processes use the server's)"
    )
    allowed_clients_dir: str = setting(
        "", "the server: a directory of the workers' public .key files; others are refused (logged)"
    )

