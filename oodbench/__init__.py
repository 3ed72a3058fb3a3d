"""oodbench: post-hoc OoD detection for (fine-tuned) CLIP from a cached feature store.

Convention everywhere: higher score = more in-distribution.
"""

__version__ = "0.1.0"
