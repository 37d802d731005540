"""Weight files, safely: the safe `torch.load`, our safetensors format folder, and the checks that fit a state dict to a
module. Shared by our format (`Tokenizer.from_pretrained`), LPIPS and the foreign-format loaders (magvit2/checkpoints);
imports no model module.

Safety: files are read with `torch.load(weights_only=True)`; pickled code is never executed. A file whose pickle
names globals outside torch's allowlist is refused with their names, except for known training metadata (numpy
scalars, pathlib paths, omegaconf/Lightning objects in `hyper_parameters` or `callbacks`): those are rebuilt as inert
placeholders that run no code, and nothing from them is used.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import pickletools
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import torch

from magvit2.nn.checks import first_non_finite

MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the keys."""


def listing(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:  # keep torch's reason, drop its advice to load without weights_only
        text = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
    text = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {text[:200]}"


def check_state_dict(model: torch.nn.Module, sd: dict[str, Any], origin: str, what: str = "the tokenizer") -> None:
    """Raise CheckpointError listing missing, unexpected, non-tensor and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    not_tensor = [k for k in sd if k in expected and not isinstance(sd[k], torch.Tensor)]
    tensors = [k for k in sd if k in expected and isinstance(sd[k], torch.Tensor)]
    meta = [k for k in tensors if sd[k].is_meta]
    # A float parameter stored as an integer (or bool) type: the header's dtype lies (I32 for F32 bytes of equal
    # width reads as +-1e9 weights) or the file is not of this model; either way the values are not weights.
    typed = [
        f"{k} {str(sd[k].dtype).removeprefix('torch.')} (expected a float dtype)"
        for k in tensors
        if expected[k].is_floating_point() and not sd[k].is_floating_point()
    ]
    shaped = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sd
        if k in expected and isinstance(sd[k], torch.Tensor) and sd[k].shape != expected[k].shape
    ]
    problems = [
        f"{label}: {listing(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("not tensors", not_tensor),
            ("meta tensors (no data)", meta),
            ("wrong dtype", typed),
            ("mis-shaped", shaped),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"{origin} does not fit {what}: " + "; ".join(problems))


def check_finite(sd: dict[str, torch.Tensor], origin: str) -> None:
    """Raise CheckpointError naming the first tensor (in key order) that holds NaN or inf. No released or trained
    checkpoint holds them; a diverged run's or a damaged file's weights would give NaN images without a word.
    Cheap: a tensor is scanned only when its sum is not finite (magvit2.nn.checks.non_finite_count)."""
    found = first_non_finite(sd.items())
    if found is not None:
        k, bad = found
        raise CheckpointError(
            f"{origin}: tensor {k} holds {bad} NaN/inf value(s) of {sd[k].numel()}; refusing non-finite weights "
            "(allow_nonfinite=True loads them anyway)"
        )


def build_module(
    factory: Callable[[], torch.nn.Module],
    sd: dict[str, Any],
    origin: str,
    device: str | torch.device = "cpu",
    *,
    what: str = "the tokenizer",
    allow_nonfinite: bool = False,
) -> Any:
    """`factory()` built on the meta device (no random init), checked against `sd` (keys, shapes, float dtypes and,
    unless `allow_nonfinite`, finite values), then given float32 copies of its tensors on `device`; returned in eval
    mode."""
    with torch.device("meta"):
        model = factory()
    check_state_dict(model, sd, origin, what)
    if not allow_nonfinite:
        check_finite(sd, origin)
    state = {k: v.to(device=device, dtype=torch.float32).contiguous() for k, v in sd.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights not found: {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): {_first_line(e)}") from None


def write_format_dir(
    directory: str | os.PathLike,
    config_name: str,
    weights_name: str,
    meta: dict[str, Any],
    module: torch.nn.Module,
) -> None:
    """Our format: `config_name` (JSON of `meta`, which carries "format" and "format_version") and `weights_name`
    (the module's state dict as contiguous CPU tensors in safetensors); the writer of `read_format_json`.

    Both files are written to temporary names beside them and fsynced, then renamed over their targets: a write that
    fails (disk full, file size limit) leaves the previous files whole, or no folder when it created the folder, and
    raises OSError in one line naming the file."""
    from safetensors.torch import save_file

    directory = os.fspath(directory)
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}

    def write_weights(tmp: str) -> None:
        save_file(state, tmp, metadata={"format": "pt"})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600; a weight file is as readable as the JSON

    def write_config(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2)

    targets = [os.path.join(directory, weights_name), os.path.join(directory, config_name)]
    temps = [temp_name(path) for path in targets]
    try:
        for path, tmp, write in zip(targets, temps, (write_weights, write_config), strict=True):
            _write_synced(path, tmp, write)
        for path, tmp in zip(targets, temps, strict=True):
            os.replace(tmp, path)
    except OSError:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


TEMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")  # what temp_name gives: .NAME.PID.tmp


def temp_name(path: str | os.PathLike) -> str:
    """The temporary file an atomic write of `path` goes through before its rename (model folders, checkpoints)."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")


def _write_synced(path: str, tmp: str, write: Callable[[str], None]) -> None:
    """`write(tmp)`, then fsync `tmp`; an io failure (Python's OSError, or the Rust io error inside a SafetensorError)
    becomes one OSError line naming `path`, the file it was meant for."""
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except Exception as e:
        code = e.errno if isinstance(e, OSError) else _errno_in(str(e))
        if code is None and not isinstance(e, OSError):
            raise  # not an io failure: a bug, shown as such
        reason = os.strerror(code) if code else _first_line(e)
        raise OSError(code or errno.EIO, f"cannot write {path}: {reason}; nothing was left half-written") from None


def _errno_in(text: str) -> int | None:
    """The OS error code in the text of a Rust io error ("I/O error: No space left on device (os error 28)")."""
    m = re.search(r"\(os error (\d+)\)", text)
    return int(m.group(1)) if m else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_format_json(path: str, format_name: str, format_version: int, hint: str) -> dict[str, Any]:
    """A `config.json` of our format without its "format"/"format_version" marks; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {hint}")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != format_name:
        raise CheckpointError(f'{path} is not a {format_name} config (no "format": "{format_name}")')
    version = meta.pop("format_version", None)
    if not isinstance(version, int) or version > format_version:
        raise CheckpointError(f"{path}: format_version {version!r} is not supported (this magvit2 reads <= 1)")
    return meta


# Globals that Lightning/omegaconf put in training metadata. They become _Inert placeholders (no code runs).
METADATA_MODULES = (
    "numpy.",
    "pathlib.",
    "omegaconf.",
    "argparse.",
    "typing.",
    "collections.",
    "datetime.",
    "enum.",
    "lightning.",
    "pytorch_lightning.",
    "lightning_fabric.",
)


class _Inert:
    """Placeholder for a metadata global: accepts any constructor arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _unsafe_globals(path: str, message: str) -> list[str]:
    """Globals a checkpoint names that torch's weights-only allowlist lacks, found without unpickling anything."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            pass
    return re.findall(r"GLOBAL ([\w.]+)", message) or _scan_plain_pickle(path)


def _scan_plain_pickle(path: str, limit: int = 1 << 26) -> list[str]:
    """Statically list the globals of a plain pickle (pickletools reads opcodes; nothing is built or called)."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, pos in pickletools.genops(f):
                if pos > limit:
                    break
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle (or a damaged one): report what was read before the bad opcode
        pass
    return [n for n in names if n not in ("torch._utils._rebuild_tensor_v2", "collections.OrderedDict")]


def verify_zip(path: str, chunk: int = 1 << 20) -> None:
    """Check every member of a zip archive (torch.save's format) against its CRC32 record, reading it in chunks;
    CheckpointError names the file and the first bad member. torch's reader does not check them: 5 of 10 single bit
    flips in a saved checkpoint loaded as changed weights. Costs 0.5-0.8 s per GiB (a cached 1 GiB checkpoint, one
    core; torch.load of the same file: 0.65-1.2 s), so a 6 GB AR checkpoint takes some 3-5 s more to load."""
    member = None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                member = info.filename
                with archive.open(info) as f:
                    while f.read(chunk):
                        pass
    except Exception as e:  # BadZipFile (CRC, header mismatch), zlib errors, unknown compression after a flipped bit
        where = f"member {member}" if member is not None else "its zip directory"
        raise CheckpointError(
            f"{path} is corrupt: {where} fails its check ({_first_line(e)}); damaged download or disk?"
        ) from None


def safe_torch_load(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) with clear errors; metadata globals become inert placeholders."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        verify_zip(path)
    try:
        with warnings.catch_warnings():  # a plain pickle draws a protocol warning; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, str(e))
        if not names:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e)}") from None
        refused = [n for n in names if not n.startswith(METADATA_MODULES)]
        if refused:
            raise CheckpointError(
                f"refusing to load {path}: its pickle calls or builds {listing(refused)}, which torch's weights-only "
                "loader does not allow (loading it would run code from the file). magvit2 never unpickles code; "
                "if you trust the file, re-save its state_dict with plain tensors"
            ) from None
        try:
            with torch.serialization.safe_globals([(_Inert, n) for n in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e2)}") from None
    except Exception as e:  # garbage makes torch's reader fail in many ways (zip, pickle, index errors)
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated download or another file type?): {_first_line(e)}"
        ) from None
