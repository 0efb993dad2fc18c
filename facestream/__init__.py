"""facestream: streaming face recognition with dlib's models, without dlib."""

__version__ = "0.1.0"
