"""facestream: streaming face recognition with dlib's models, without dlib."""

from .errors import (
    BackendError,
    ConfigError,
    FacestreamError,
    GalleryError,
    InputError,
    ModelError,
    PipelineError,
)

__version__ = "0.1.0"
__all__ = [
    "BackendError",
    "ConfigError",
    "FacestreamError",
    "GalleryError",
    "InputError",
    "ModelError",
    "PipelineError",
    "__version__",
]
