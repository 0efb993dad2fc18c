"""facestream: streaming face recognition with dlib's models, without dlib.

The flat API (`facestream/api.py`) is re-exported here and imported on first use, so that
`import facestream.pipeline...` in the pipeline's processes does not load it:

    import facestream as fs
    faces = fs.analyze(fs.load_image("photo.jpg"))   # boxes, scores, landmarks, chips, descriptors
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

_API = (
    "FaceBatch", "Gallery", "ImageError", "Matches", "analyze", "chips", "compare", "descriptors", "detect",
    "distance", "landmarks", "load_image",
)  # fmt: skip
__all__ = [
    "BackendError", "ConfigError", "FaceBatch", "FacestreamError", "Gallery", "GalleryError", "ImageError",
    "InputError", "Matches", "ModelError", "PipelineError", "__version__", "analyze", "chips", "compare",
    "descriptors", "detect", "distance", "landmarks", "load_image",
]  # fmt: skip

if TYPE_CHECKING:
    from facestream.api import (
        FaceBatch,
        Gallery,
        ImageError,
        Matches,
        analyze,
        chips,
        compare,
        descriptors,
        detect,
        distance,
        landmarks,
        load_image,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        from facestream import api

        return getattr(api, name)
    raise AttributeError(f"module 'facestream' has no attribute {name!r}")
