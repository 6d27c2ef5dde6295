"""tracemark: data provenance for image classifiers.

Mark images before publishing them; later, from query access alone, test whether a
model was trained on them. See :func:`mark_folder` and :func:`audit`; dataset
publishers see :func:`watermark_dataset` and :func:`verify`.
"""

__version__ = "0.1.0"

from .api import audit, mark_folder
from .dataset_watermark import verify, watermark_dataset, watermark_report
from .errors import TracemarkError
from .keys import Key, load_key

__all__ = [
    "Key",
    "TracemarkError",
    "__version__",
    "audit",
    "load_key",
    "mark_folder",
    "verify",
    "watermark_dataset",
    "watermark_report",
]
