"""What the CPU offers for low-precision arithmetic, and the precision a run uses.

`cpu_features()` reports the bf16 and int8 matrix instructions of this CPU: Intel AMX tiles
(AMX-BF16, AMX-INT8), AVX512-BF16, AVX512-VNNI / AVX-VNNI, and on Arm the BF16 and I8MM
extensions. It reads the kernel's flags in ``/proc/cpuinfo`` on Linux (they are shown only
when the kernel enables the state, e.g. AMX tiles), falls back to torch's own CPU probe
elsewhere, and reports nothing when neither answers -- so "auto" then means fp32.

`resolve_precision` turns a requested ``"fp32" | "bf16" | "auto"`` into the precision a
model trains in on a device; `mixed_precision` wraps a model so that its forward runs under
bf16 autocast and its outputs come back in fp32 (the loss is then computed in fp32, while
the parameters -- the master weights -- and the optimizer state stay fp32).

    >>> cpu_features().describe()  # doctest: +SKIP
    'AMX-BF16, AMX-INT8, AVX512-BF16, AVX512-VNNI, AVX-VNNI'
    >>> resolve_precision("auto", model)  # doctest: +SKIP
    'bf16'
"""

from __future__ import annotations

import functools
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "AUTO_BF16_MIN_WIDTH",
    "PRECISIONS",
    "CpuFeatures",
    "MixedPrecision",
    "check_precision",
    "cpu_features",
    "fp32_kernel",
    "linear_width",
    "mixed_precision",
    "parse_cpuinfo_flags",
    "resolve_precision",
]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")

# "auto" trains in bf16 when the model's typical matmul (see `linear_width`) is at least this
# wide. Measured with `python benchmarks/core.py --what train --sweep 32,64,96,128,160,192,
# 256,384` (2-layer core decoders, 16 x 128 tokens per step, 2 threads, Xeon with AMX-BF16,
# torch 2.13, load average 5-8 from other jobs): bf16/fp32 step time 1.79x at width 32,
# 1.31x at 64, 1.12x at 96, 1.29x at 128 (autocast's per-op casts cost more than the faster
# matmuls save), 0.95x at 160, then 0.78x at 192 and 0.69x at 256. 192 is the first width
# that was clearly faster; README "bf16 training" has the other runs.
AUTO_BF16_MIN_WIDTH = 192


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's low-precision matrix instructions.

    Attributes:
        amx_bf16: Intel AMX tiles with bf16 dot products (Sapphire Rapids and later).
        amx_int8: Intel AMX tiles with int8 dot products.
        avx512_bf16: AVX512-BF16 (``vdpbf16ps``; Cooper Lake, Zen 4 and later).
        avx512_vnni: AVX512-VNNI int8 dot products (Cascade Lake and later).
        avx_vnni: The 256-bit VEX form of VNNI (Alder Lake and later).
        arm_bf16: Arm's BF16 extension (``bfmmla``; Graviton3, Apple M2 and later).
        arm_i8mm: Arm's int8 matrix multiply extension.
        source: Where the answer came from: "cpuinfo", "torch" or "none".
    """

    amx_bf16: bool = False
    amx_int8: bool = False
    avx512_bf16: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    arm_bf16: bool = False
    arm_i8mm: bool = False
    source: str = "none"

    @property
    def native_bf16(self) -> bool:
        """True when the CPU multiplies bf16 matrices in hardware (AMX, AVX512 or Arm BF16)."""
        return self.amx_bf16 or self.avx512_bf16 or self.arm_bf16

    @property
    def native_int8(self) -> bool:
        """True when the CPU has int8 dot-product instructions (AMX, VNNI or Arm I8MM)."""
        return self.amx_int8 or self.avx512_vnni or self.avx_vnni or self.arm_i8mm

    def describe(self) -> str:
        """The features present, e.g. "AMX-BF16, AVX512-VNNI", or a sentence saying none."""
        names = [
            _LABELS[f.name] for f in fields(self) if f.name in _LABELS and getattr(self, f.name)
        ]
        return ", ".join(names) if names else "no bf16/int8 matrix instructions detected"


_LABELS = {
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "avx512_bf16": "AVX512-BF16",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "arm_bf16": "ARM-BF16",
    "arm_i8mm": "ARM-I8MM",
}
# /proc/cpuinfo flag -> CpuFeatures field (x86 "flags", aarch64 "Features").
_CPUINFO_FLAGS = {
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "bf16": "arm_bf16",
    "i8mm": "arm_i8mm",
}


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The CPU flags of the first processor in ``/proc/cpuinfo`` text.

    Args:
        text: The file's contents; x86 lists flags under "flags", aarch64 under "Features".

    Returns:
        The flags, lower case; empty when the text has no such line.
    """
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.lower().split())
    return frozenset()


def _from_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> CpuFeatures | None:
    try:
        flags = parse_cpuinfo_flags(path.read_text(errors="replace"))
    except OSError:
        return None
    if not flags:
        return None
    present = {field: True for flag, field in _CPUINFO_FLAGS.items() if flag in flags}
    return CpuFeatures(**present, source="cpuinfo")


def _from_torch() -> CpuFeatures | None:
    """torch's cpuinfo-based probe (private API, hence every lookup is guarded)."""
    cpu = getattr(torch, "cpu", None)
    probes: dict[str, Callable[[], bool] | None] = {
        # AMX tiles come with both bf16 and int8 on every CPU shipped so far (Sapphire Rapids).
        "amx_bf16": getattr(cpu, "_is_amx_tile_supported", None),
        "amx_int8": getattr(cpu, "_is_amx_tile_supported", None),
        "avx512_bf16": getattr(cpu, "_is_avx512_bf16_supported", None),
        "avx512_vnni": getattr(cpu, "_is_vnni_supported", None),
    }
    if not any(probes.values()):
        return None
    try:
        present = {name: bool(probe()) for name, probe in probes.items() if probe is not None}
    except Exception:  # noqa: BLE001 - a probe failing means "unknown", not a crash
        return None
    return CpuFeatures(**present, source="torch")


@functools.cache
def cpu_features() -> CpuFeatures:
    """This CPU's bf16/int8 matrix instructions; cached per process.

    Linux: the kernel's flags in /proc/cpuinfo. Elsewhere (or if that file is unreadable):
    torch's CPU probe on x86. If neither answers, every feature is False (``source="none"``).
    """
    found = _from_cpuinfo() if platform.system() == "Linux" else None
    if found is None and platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        found = _from_torch()
    return found or CpuFeatures()


def check_precision(precision: str) -> str:
    """Returns ``precision`` if it is one of `PRECISIONS`, else raises ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    return precision


def linear_width(model: nn.Module) -> int:
    """The width of a model's typical matmul: the median of ``min(in, out)`` over its
    ``nn.Linear`` layers, each weighted by its number of weights.

    Whether bf16 pays depends on the matrix sizes, not the parameter count: a deep stack of
    narrow layers gains nothing. Returns 0 for a model without ``nn.Linear`` layers.
    """
    layers = sorted(
        (min(m.in_features, m.out_features), m.in_features * m.out_features)
        for m in model.modules()
        if isinstance(m, nn.Linear)
    )
    half, seen = sum(n for _, n in layers) / 2, 0
    for width, n in layers:
        seen += n
        if seen >= half:
            return width
    return 0


def resolve_precision(
    precision: str, model: nn.Module | None = None, device: str | torch.device = "cpu"
) -> Literal["fp32", "bf16"]:
    """The precision a model trains in on ``device``.

    - "fp32": fp32.
    - "bf16": bf16 autocast where the hardware multiplies bf16 natively (a CPU with AMX,
      AVX512-BF16 or Arm BF16; a CUDA GPU with bf16 support). Elsewhere bf16 would be
      emulated -- slower than fp32 and less precise -- so this warns and returns "fp32".
    - "auto": "bf16" on a CPU with native bf16 when ``linear_width(model)`` is at least
      `AUTO_BF16_MIN_WIDTH` (below it bf16 measured slower), else "fp32". On other devices
      "auto" is "fp32": the threshold was measured on CPUs only; ask for "bf16" there.
      It was measured at 2048 tokens a step; with far fewer rows per matmul the casts
      weigh more, so time both (`benchmarks/core.py --sweep`) if the batch is tiny.

    Args:
        precision: "fp32", "bf16" or "auto".
        model: The model; needed for "auto".
        device: Where it trains.

    Returns:
        "fp32" or "bf16".
    """
    check_precision(precision)
    if precision == "fp32":
        return "fp32"
    device_type = torch.device(device).type
    native, hardware = _native_bf16(device_type)
    if precision == "bf16":
        if not native:
            warnings.warn(
                f"precision='bf16' asked for, but {hardware} has no native bf16 matmul: "
                "emulated bf16 is slower than fp32 and less precise, so training runs in fp32",
                RuntimeWarning,
                stacklevel=2,
            )
            return "fp32"
        return "bf16"
    if model is None:
        raise ValueError("precision='auto' needs the model to decide")
    if device_type == "cpu" and native and linear_width(model) >= AUTO_BF16_MIN_WIDTH:
        return "bf16"
    return "fp32"


def _native_bf16(device_type: str) -> tuple[bool, str]:
    """Whether ``device_type`` multiplies bf16 natively, and the hardware's name for messages."""
    if device_type == "cpu":
        feats = cpu_features()
        return feats.native_bf16, f"this CPU ({feats.describe()})"
    if device_type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, "this GPU"
    return False, f"device type {device_type!r}"


class MixedPrecision(nn.Module):
    """Runs a module's forward under bf16 autocast and returns its float outputs in fp32.

    The wrapped module's parameters stay fp32 (autocast casts them per op, and their
    gradients arrive in fp32), so the optimizer updates fp32 master weights; a loss computed
    from the outputs is computed in fp32.

    Args:
        module: The model (or its DDP wrapper).
        device_type: "cpu" or "cuda".
    """

    def __init__(self, module: nn.Module, device_type: str = "cpu") -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return _to_fp32(out)


def _to_fp32(out: Any) -> Any:
    """Floating tensors in a nested tuple/list/dict cast to fp32; everything else as is."""
    if isinstance(out, torch.Tensor):
        return _fp32_tensor(out)
    if isinstance(out, dict):
        return type(out)({k: _to_fp32(v) for k, v in out.items()})
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # namedtuple
        return type(out)(*(_to_fp32(v) for v in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_to_fp32(v) for v in out)
    return out


def fp32_kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a kernel that has fp32 code only, so that it works under bf16 autocast.

    Under autocast (on the device of its first tensor argument) the floating tensors among
    its arguments are cast to fp32 and it runs with autocast off -- what torch does for its
    own fp32-only ops. Its outputs stay fp32; the next autocast op casts them as it needs.
    Without autocast it is called as is.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        device_type = first.device.type if first is not None else None
        if device_type is None or not torch.is_autocast_enabled(device_type):
            return fn(*args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return fn(
                *(_fp32_tensor(a) for a in args), **{k: _fp32_tensor(v) for k, v in kwargs.items()}
            )

    return wrapper


def _fp32_tensor(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def mixed_precision(model: nn.Module, precision: str, device: str | torch.device) -> nn.Module:
    """``model`` itself for "fp32", a `MixedPrecision` wrapper for "bf16" (resolved values)."""
    if precision == "fp32":
        return model
    if precision != "bf16":
        raise ValueError(f"mixed_precision takes a resolved precision, got {precision!r}")
    return MixedPrecision(model, torch.device(device).type)
