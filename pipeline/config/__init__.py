"""The configuration schema: one typed, validated source of every key, its default, range and meaning.

This package's interface is what it exports here; its modules: `schema` (how a key is declared and a value
checked), `sections` (one dataclass per section), `root` (`Config`), `load` (`load_config`), `render`
(config.yaml's text; ``python -m facestream.pipeline.config`` prints it).

Why dataclasses and not pydantic: the schema needs types, defaults, ranges, enums and a line of
documentation per key, plus a dict round-trip (the config travels to stage processes as JSON in the run's
``spec.json``). Dataclass fields with metadata give all of that in ~200 lines without a new dependency,
and the error messages stay ours (key path, value, what is allowed).

- `Config` has one dataclass per section (`config.gallery.distance_threshold`, ...). Components get the
  typed section they need (`KioskPolicy.from_config(config.kiosk)`, `Gallery.from_config(config.gallery)`).
- `load_config(path)` reads a YAML file over the defaults and validates every value; a bad value raises
  `ConfigError` naming the key path, the value and what is allowed (the CLI prints it and exits 2 before
  any process starts). No file is read implicitly: `--config FILE`, else ``$FACESTREAM_CONFIG``, else the
  built-in defaults; where the configuration came from is logged.
- `Config.to_dict()` / `Config.from_dict()` round-trip through JSON (``spec.json``).
- ``config.yaml`` at the top of the repository is generated from this schema
  (``python -m facestream.pipeline.config > config.yaml``); tests/test_config.py checks it is up to date.

Adding a key is a one-place change: add a field to its section in `sections` with ``setting(default, "what
it means", ge=/gt=/le=/choices=)``, then regenerate ``config.yaml`` with the command above. A new section
is a new dataclass plus one field of `Config` in `root` (with ``section(Class, "comment")``).
"""

from ...errors import ConfigError
from .load import CONFIG_ENV, load_config
from .render import render_yaml
from .root import Config
from .sections import (
    DetectorConfig,
    EmbedderConfig,
    EndpointsConfig,
    EngineConfig,
    EnrolmentConfig,
    GalleryConfig,
    KioskConfig,
    MetricsConfig,
    ModelsConfig,
    MqttConfig,
    OutputsConfig,
    PipelineConfig,
    SecurityConfig,
    SourcesConfig,
    TrackerConfig,
    UnknownsConfig,
    WebConfig,
)

__all__ = [
    "CONFIG_ENV",
    "Config",
    "ConfigError",
    "DetectorConfig",
    "EmbedderConfig",
    "EndpointsConfig",
    "EngineConfig",
    "EnrolmentConfig",
    "GalleryConfig",
    "KioskConfig",
    "MetricsConfig",
    "ModelsConfig",
    "MqttConfig",
    "OutputsConfig",
    "PipelineConfig",
    "SecurityConfig",
    "SourcesConfig",
    "TrackerConfig",
    "UnknownsConfig",
    "WebConfig",
    "load_config",
    "render_yaml",
]
