"""`Config`, the root of the schema: one field per section, the dict round-trip (``spec.json``), command-line
overrides, and the rules between keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError
from .schema import check_value, from_mapping, section, setting, to_plain_dict, type_hints
from .sections import (
    DetectorConfig,
    EmbedderConfig,
    EngineConfig,
    EnrolmentConfig,
    GalleryConfig,
    KioskConfig,
    MetricsConfig,
    ModelsConfig,
    OutputsConfig,
    PipelineConfig,
    SecurityConfig,
    SourcesConfig,
    TrackerConfig,
    UnknownsConfig,
    WebConfig,
)


@dataclass
class Config:
    """The whole configuration: one typed section per part of facestream."""

    models: ModelsConfig = section(ModelsConfig, "dlib model files. Empty = the copies shipped by the PyPI package "
                                                 "face-recognition-models.")  # fmt: skip
    cache_dir: str = setting(
        "",
        "Exported ONNX graphs and parsed models are cached here, keyed by the model file's sha256.\n"
        "Empty = $FACESTREAM_CACHE, else ~/.cache/facestream.",
    )
    engine: EngineConfig = section(EngineConfig)
    detector: DetectorConfig = section(DetectorConfig)
    embedder: EmbedderConfig = section(EmbedderConfig)
    gallery: GalleryConfig = section(GalleryConfig)
    enrolment: EnrolmentConfig = section(EnrolmentConfig)
    unknowns: UnknownsConfig = section(
        UnknownsConfig, "Unknown people: `facestream unknowns` and the web page group unknown tracks' faces."
    )
    pipeline: PipelineConfig = section(
        PipelineConfig,
        "`facestream run`: each stage is its own process, connected by ZeroMQ sockets "
        "(see pipeline/runtime/stages.py).",
    )
    sources: SourcesConfig = section(SourcesConfig)
    tracker: TrackerConfig = section(TrackerConfig)
    kiosk: KioskConfig = section(
        KioskConfig,
        "Kiosk access decisions (pipeline/domain/kiosk.py): per track, granted when k of its last n embedded faces\n"
        "match the same enrolled person within the threshold and beat the runner-up person by the margin; else denied.",
    )
    outputs: OutputsConfig = section(OutputsConfig)
    metrics: MetricsConfig = section(
        MetricsConfig, "Prometheus metrics (pipeline/integrations/metrics.py): /metrics on the web view, or run "
        "--metrics HOST:PORT."
    )
    web: WebConfig = section(WebConfig, "The web view (`facestream run --web`, "
        "`facestream serve`; pipeline/web/app.py).")
    security: SecurityConfig = section(
        SecurityConfig, "tcp:// links between machines (pipeline/runtime/security.py; `facestream keys --help`)"
    )
    source: str = field(default="built-in defaults", compare=False, repr=False, metadata={"internal": True})

    # -- conversions ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able nested dict (for spec.json); `from_dict` reverses it."""
        return to_plain_dict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> Config:
        """Defaults overlaid with `data` (a nested mapping), every value validated; ConfigError names the
        first bad key path, its value and what is allowed (`where` names the file in the message)."""
        config = from_mapping(cls, data, where, "")
        _check_cross(config, where)
        config.source = where
        return config

    def set(self, path: str, value: Any, where: str = "command line") -> None:
        """Set one key (``"detector.upsample"``), validated like a file's value (a command-line override)."""
        *sections, key = path.split(".")
        target: Any = self
        for name in sections:
            target = getattr(target, name)
        fields = {f.name: f for f in dataclasses.fields(target)}
        if key not in fields:
            raise ConfigError(f"{where}: {path}: unknown key")
        setattr(target, key, check_value(fields[key], type_hints(type(target))[key], value, where, path))
        _check_cross(self, where)

    def copy(self) -> Config:
        """An independent copy (sections are mutable)."""
        copied = Config.from_dict(self.to_dict(), self.source)
        return copied



def _check_cross(config: Config, where: str) -> None:
    """Rules between keys."""
    kiosk = config.kiosk
    if kiosk.k > kiosk.n:
        raise ConfigError(f"{where}: kiosk.k: {kiosk.k} is more than kiosk.n ({kiosk.n}); allowed: 1 <= k <= n")
    engine = config.engine
    for i, axis in enumerate(("height", "width")):
        low, opt, high = engine.detector_min_hw[i], engine.detector_opt_hw[i], engine.detector_max_hw[i]
        if not low <= opt <= high:
            raise ConfigError(f"{where}: engine.detector_opt_hw: {axis}s {low}, {opt}, {high} (min, opt, max); "
                              "allowed: min <= opt <= max")  # fmt: skip
    if config.sources.reconnect_initial_s > config.sources.reconnect_max_s:
        raise ConfigError(f"{where}: sources.reconnect_initial_s: {config.sources.reconnect_initial_s!r} is more "
                          f"than sources.reconnect_max_s ({config.sources.reconnect_max_s!r}); allowed: at most that")

