"""Domain errors shared by the library, the index and the service.

Each carries a one-line message naming the offending value; entry points print ``str(err)`` and exit non-zero,
the service maps them to HTTP status codes in one place.
"""

from __future__ import annotations


class KeepfitError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(KeepfitError):
    """An unknown config name, an unknown key or a bad value in a config."""


class ArtifactError(KeepfitError):
    """A model artifact that is missing, incomplete, corrupted or incompatible."""


class ImageError(KeepfitError):
    """An input that is not a decodable image."""


class ImageTooLargeError(ImageError):
    """An image over the byte or pixel limit (decompression bombs included)."""


class UnsupportedMediaError(ImageError):
    """A file type we do not read (e.g. a PDF sent as an image)."""


class CheckpointError(KeepfitError):
    """A checkpoint whose keys or shapes do not match the model."""


class DataError(KeepfitError):
    """A manifest, folder or label column that cannot be used."""


class IndexStoreError(KeepfitError):
    """An index directory that is missing, corrupted or inconsistent."""


class IndexMismatchError(IndexStoreError):
    """An index built with another artifact version (or embedding size) than the one loaded."""


class NotFoundError(KeepfitError):
    """An id, path or name that does not exist (an unknown index id, say)."""


class TrainingDivergedError(KeepfitError):
    """The loss became NaN or infinite: a command-line error (one line), not a crash."""
