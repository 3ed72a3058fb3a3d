"""open_clip loading, checkpoint adapters and the offline tiny model."""

# the registry sits below every adapter module; importing them here registers the built-in formats
from . import hf_clip as _hf_clip  # noqa: F401
from . import lora as _lora  # noqa: F401
from . import prompts as _prompts  # noqa: F401
from .checkpoints import adapt
from .loading import ModelBundle, check_device, fingerprint_state, load_model
from .registry import ADAPTERS, Adapted, register_adapter
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
