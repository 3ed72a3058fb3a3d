"""open_clip loading, checkpoint adapters and the offline tiny model."""

from .checkpoints import ADAPTERS, Adapted, adapt, register_adapter
from .loading import ModelBundle, check_device, fingerprint_state, load_model
from .tiny import TINY_MODEL, TINY_TAG, ensure_tiny, register_configs, train_tiny

__all__ = [
    "ADAPTERS",
    "TINY_MODEL",
    "TINY_TAG",
    "Adapted",
    "ModelBundle",
    "adapt",
    "check_device",
    "ensure_tiny",
    "fingerprint_state",
    "load_model",
    "register_adapter",
    "register_configs",
    "train_tiny",
]
