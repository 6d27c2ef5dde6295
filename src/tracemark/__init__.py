"""tracemark: data provenance for image classifiers."""

__version__ = "0.1.0"
