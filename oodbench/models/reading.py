"""Read checkpoint files without running their code.

Formats read here: safetensors; ``torch.save`` archives (zip and legacy) of tensors; and whole
pickled Python objects — WiSE-FT's and FLYP's ``utils.torch_save`` writes
``pickle.dump(model.cpu(), f)`` of an ``ImageClassifier`` / ``ImageEncoder`` / ``CLIPEncoder``
whose classes (``src.models.modeling``, ``clip.model``) are not importable where oodbench runs.

Pickles are read by :class:`SafeUnpickler`: it rebuilds tensors, parameters and storages with
torch's own rebuild functions and turns *every* other class or function the file names into an
inert stub that only keeps the pickled attributes (an ``nn.Module`` stub keeps ``_parameters``,
``_buffers`` and ``_modules``, so ``state_dict()`` works). Nothing is imported and no code from
the file runs. Which classes the file named is kept (``__pickle_classes__``): it tells e.g.
whether the model was OpenAI's ``clip`` package (QuickGELU). ``trust_pickle=True`` unpickles
for real (importable classes are used; missing ones still become stubs).
"""

from __future__ import annotations

import io
import json
import pickle
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import OodbenchError

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
CLASSES_KEY = "__pickle_classes__"


class _Stub(torch.nn.Module):
    """Stand-in for a class or function named in a pickle: keeps the pickled attributes only."""

    _stub_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a stubbed call: remember nothing
        torch.nn.Module.__init__(self)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) state
        torch.nn.Module.__init__(self)
        if isinstance(state, dict):
            for k, v in state.items():
                if isinstance(k, str) and not k.startswith("__"):
                    object.__setattr__(self, k, v)
            for attr in ("_parameters", "_buffers", "_modules"):
                if not isinstance(self.__dict__.get(attr), dict):
                    object.__setattr__(self, attr, OrderedDict())
            if not isinstance(self.__dict__.get("_non_persistent_buffers_set"), set):
                object.__setattr__(self, "_non_persistent_buffers_set", set())
            self._modules = OrderedDict((k, m) for k, m in self._modules.items()
                                        if m is None or isinstance(m, torch.nn.Module))
            self._parameters = OrderedDict((k, p) for k, p in self._parameters.items()
                                           if p is None or isinstance(p, torch.Tensor))
            self._buffers = OrderedDict((k, b) for k, b in self._buffers.items()
                                        if b is None or isinstance(b, torch.Tensor))

    # stubs are inert: whatever a pickle asks of them (append, setitem, ...) is ignored
    def append(self, *args: Any) -> None:
        pass

    def extend(self, *args: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<stub {self._stub_name}>"


class _Call:
    """An allowed function as the pickle sees it: callable, but immutable to the pickle (a BUILD
    on the real function object could set e.g. its ``__defaults__`` for the whole process)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"the pickle tries to change {getattr(self.fn, '__name__', 'a function')}")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    """torch's tensor-subclass rebuild, allowed only for plain tensors and parameters."""
    func = func.fn if isinstance(func, _Call) else func
    if func not in _REBUILDERS or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise pickle.UnpicklingError(f"tensor subclass {getattr(new_type, '_stub_name', new_type)}")
    ret = func(*args)
    if type(ret) is not new_type:
        ret = ret.as_subclass(new_type)
    return ret


def _load_from_bytes(b: bytes) -> Any:
    """A storage pickled by plain ``pickle``: a legacy torch archive, read through this module."""
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=False, pickle_module=SAFE_PICKLE)


_REBUILDERS = {torch._utils._rebuild_tensor_v2, torch._utils._rebuild_tensor,
               torch._utils._rebuild_parameter, torch._utils._rebuild_parameter_with_state}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    **{("torch", n): getattr(torch, n) for n in ("float32", "float16", "bfloat16", "float64", "int64",
                                                 "int32", "int16", "int8", "uint8", "bool")},
}


class SafeUnpickler(pickle.Unpickler):
    """Rebuilds tensors; every other global becomes a stub (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        module, name = _py3_name(module, name)
        if (module, name) in _ALLOWED:
            found = _ALLOWED[(module, name)]
            return _Call(found) if isinstance(found, types.FunctionType) else found
        self.seen.add(f"{module}.{name}")
        _SEEN.add(f"{module}.{name}")
        return _stub_class(module, name)


class TrustingUnpickler(pickle.Unpickler):
    """A real unpickler (runs code) whose missing classes become stubs instead of errors."""

    def find_class(self, module: str, name: str) -> Any:
        _SEEN.add(f"{module}.{name}")
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stub_class(module, name)


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names in protocol < 3 pickles (``__builtin__.set``), as ``pickle`` maps them."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_STUBS: dict[tuple[str, str], type] = {}
_SEEN: set[str] = set()  # classes named by the pickle being read (torch.load hides the unpickler)


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        safe = name if name.isidentifier() else "Stub"
        _STUBS[key] = type(safe, (_Stub,), {"__module__": f"oodbench_stub.{module}", "_stub_name": f"{module}.{name}"})
    return _STUBS[key]


SAFE_PICKLE = types.SimpleNamespace(Unpickler=SafeUnpickler, load=lambda f, **kw: SafeUnpickler(f, **kw).load(),
                                    __name__="pickle")
TRUST_PICKLE = types.SimpleNamespace(Unpickler=TrustingUnpickler,
                                     load=lambda f, **kw: TrustingUnpickler(f, **kw).load(), __name__="pickle")


# ----------------------------------------------------------------------------- files

def _fail(path: Path, what: str) -> OodbenchError:
    return OodbenchError(f"Checkpoint {path}: {what}")


def read_safetensors(path: Path) -> dict[str, Any]:
    """All tensors of a ``.safetensors`` file (+ ``__metadata__`` when it has more than the format)."""
    from safetensors import SafetensorError, safe_open

    if path.stat().st_size == 0:
        raise _fail(path, "the file is empty (an interrupted copy or save?): copy or save it again.")
    try:
        out: dict[str, Any] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _fail(path, f"not a readable safetensors file ({_short(exc)}): it is truncated or corrupt, or "
                          "not safetensors at all; copy or save it again.") from None
    if set(meta) - {"format"}:
        out["__metadata__"] = dict(meta)
    return out


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:140]}" if text else type(exc).__name__


def read_pickled(path: Path, trust_pickle: bool = False) -> Any:
    """A ``torch.save`` archive or a plain pickle, tensors rebuilt and every other class stubbed.

    Returns what the file holds, with ``nn.Module`` objects replaced by their state dicts
    (see :func:`modules_to_state`). Raises one-line :class:`OodbenchError` on any failure.
    """
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "the file is empty (an interrupted save or copy?): save or copy it again.")
    with open(path, "rb") as f:
        head = f.read(4)
    module = TRUST_PICKLE if trust_pickle else SAFE_PICKLE
    _SEEN.clear()
    try:
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip archive
            if not zipfile.is_zipfile(path):
                raise _fail(path, "a truncated or corrupt PyTorch archive: save or copy it again.")
            obj = _torch_load(path, module)
        elif head[:1] == b"\x80":  # a pickle: torch's legacy format or a plain pickle.dump
            with open(path, "rb") as f:
                first = module.Unpickler(f).load()
                if first == _TORCH_LEGACY_MAGIC:
                    obj = _torch_load(path, module)
                else:
                    obj = first
        else:
            raise _fail(path, "neither a PyTorch archive, a pickle nor safetensors (random or foreign bytes): "
                              "pass the checkpoint file the training code wrote.")
    except OodbenchError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OSError, ImportError, zipfile.BadZipFile, MemoryError, UnicodeDecodeError) as exc:
        raise _fail(path, f"could not be read ({_short(exc)}): it is truncated or corrupt, or not a checkpoint; "
                          "save or copy it again.") from None
    classes = sorted(_SEEN)
    state = modules_to_state(obj)
    if not trust_pickle and classes and not _has_tensors(state):
        named = ", ".join(c for c in classes if not c.startswith("torch."))[:120] or classes[0]
        raise _fail(path, f"holds no tensors oodbench can rebuild without running the file's code (it names "
                          f"{named}): re-save it as a state dict, or pass --trust-pickle if you trust the file "
                          "(unpickling runs its code).")
    if isinstance(state, dict) and classes:
        state[CLASSES_KEY] = classes
    return state


def _has_tensors(obj: Any, depth: int = 3) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth and isinstance(obj, dict):
        return any(_has_tensors(v, depth - 1) for v in obj.values())
    if depth and isinstance(obj, list | tuple):
        return any(_has_tensors(v, depth - 1) for v in obj[:64])
    return False


def _torch_load(path: Path, module: Any) -> Any:
    """``torch.load`` through ``module``'s unpickler. ``weights_only=False`` is what lets torch use
    that unpickler at all (``weights_only=True`` takes torch's own, which refuses the pickled
    objects WiSE-FT/FLYP files hold): :data:`SAFE_PICKLE` is itself the restriction (tensors
    rebuilt, every other global stubbed, nothing imported or run); :data:`TRUST_PICKLE` is used
    only with ``--trust-pickle``."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)


def modules_to_state(obj: Any) -> Any:
    """Replace an ``nn.Module`` (or the modules among a dict's values) by its state dict."""
    if isinstance(obj, torch.nn.Module):
        return _module_state(obj)
    if isinstance(obj, dict):
        return {k: (_module_state(v) if isinstance(v, torch.nn.Module) else v) for k, v in obj.items()}
    return obj


def _module_state(m: torch.nn.Module) -> dict[str, Any]:
    try:
        return dict(m.state_dict())
    except Exception as exc:  # noqa: BLE001 - a stubbed module of a foreign layout
        raise OodbenchError(f"A pickled {type(m).__name__} has no readable state dict ({_short(exc)}).") from None


def read_tensors(path: Path, trust_pickle: bool = False) -> Any:
    """Read a checkpoint file (safetensors, torch archive or plain pickle); no code runs by default."""
    path = Path(path)
    if not path.exists():
        raise OodbenchError(f"Checkpoint {str(path)!r} does not exist: check the --ckpt path.")
    if path.is_dir():
        raise OodbenchError(
            f"Checkpoint {str(path)!r} is a directory without adapter_config.json (PEFT), config.json + "
            "model.safetensors (Hugging Face CLIPModel) or prompt_learner/ (CoOp): pass the checkpoint file itself."
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{" and not head.startswith(b"PK")):
        return read_safetensors(path)
    return read_pickled(path, trust_pickle)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or one clear error."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OodbenchError(f"{path} is not valid JSON ({_short(exc)}): restore the file the training code wrote.") from None
    if not isinstance(obj, dict):
        raise OodbenchError(f"{path} must hold a JSON object, not {type(obj).__name__}.")
    return obj
