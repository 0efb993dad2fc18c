"""Loading: the configuration from ``--config FILE``, else ``$FACESTREAM_CONFIG``, else the built-in defaults,
validated, and where it came from logged."""

from __future__ import annotations

import logging
import os
import typing
from pathlib import Path

import yaml

from ...errors import ConfigError
from .root import Config

log = logging.getLogger(__name__)

CONFIG_ENV = "FACESTREAM_CONFIG"  # names the configuration file when --config does not


def load_config(path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """The configuration from `path`, else from ``$FACESTREAM_CONFIG``, else the defaults (logged which).

    ``./config.yaml`` is not read implicitly: a file in whatever directory a command runs from must not
    change what it does without a word. ConfigError for an unreadable file or any bad value.
    """
    environ = os.environ if environ is None else environ
    how = "--config"
    if path is None and environ.get(CONFIG_ENV):
        path, how = environ[CONFIG_ENV], f"${CONFIG_ENV}"
    if path is None:
        if Path("config.yaml").is_file():
            log.info("configuration: built-in defaults (./config.yaml is not read unless named: --config config.yaml)")
        else:
            log.info("configuration: built-in defaults")
        return Config()
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    config = Config.from_dict(loaded, str(path))
    log.info("configuration: %s (from %s)", Path(path).resolve(), how)
    return config

