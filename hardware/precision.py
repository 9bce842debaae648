"""`--precision auto`: bf16 autocast only where the hardware runs bf16 natively, fp32 everywhere else.

bf16 halves the bytes a forward pass moves and, on hardware built for it, doubles its
arithmetic rate. Elsewhere it is emulated: on a CPU with AVX2 only (most laptops and many cloud
machines) a bf16 matrix product ran at 0.2 GFLOP/s against 55 in fp32, so "bf16 by default"
would make training there five times slower than the reference. Hence:

- CUDA: bf16 when the device supports it natively (Ampere and newer).
- CPU: bf16 when the CPU has AVX512-BF16 or AMX *and* neither instruction-set cap a user may
  set forbids using them: `ONEDNN_MAX_CPU_ISA` (oneDNN's convolutions and matrix products) and
  `ATEN_CPU_CAPABILITY` (torch's own kernels). Capping both to AVX2 makes an AVX-512 machine
  behave, and choose, like an AVX2-only one.

`choose(requested, device)` returns the decision with its reason in words; main.py prints it
as a run's first lines and records it in checkpoints and evaluation files.
"""

import os
import warnings
from dataclasses import dataclass

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # --precision value -> autocast dtype (None: no autocast)
CHOICES = ("auto", *PRECISIONS)

# oneDNN's ISA names in increasing order (ONEDNN_MAX_CPU_ISA); bf16 runs natively from AVX512_CORE_BF16 on.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
ONEDNN_UNCAPPED = ("", "ALL", "DEFAULT")
# ATen's levels (ATEN_CPU_CAPABILITY), lowest first; its bf16 kernels need AVX512 to be native.
ATEN_LEVELS = ("default", "zvector", "vsx", "sve256", "avx2", "avx512")


@dataclass(frozen=True)
class PrecisionChoice:
    name: str  # "fp32" or "bf16": what the run uses
    reason: str  # why, in words
    emulated: bool = False  # bf16 asked for explicitly on hardware that emulates it

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.name]


@dataclass(frozen=True)
class CpuFacts:
    """What decides bf16 on a CPU; gathered by cpu_facts(), faked in tests."""

    avx512_bf16: bool  # the CPU has the AVX512-BF16 instructions
    amx: bool  # the CPU has AMX tiles (bf16 matrix units)
    onednn_cap: str  # ONEDNN_MAX_CPU_ISA as set ('' when unset)
    aten_capability: str  # the instruction set torch's own kernels use (ATEN_CPU_CAPABILITY or detected)


def cpu_facts() -> CpuFacts:
    return CpuFacts(avx512_bf16=torch.cpu._is_avx512_bf16_supported(), amx=torch.cpu._is_amx_tile_supported(),
                    onednn_cap=os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper(),
                    aten_capability=torch.backends.cpu.get_cpu_capability().lower())


def cpu_native_bf16(facts: CpuFacts) -> tuple[bool, str]:
    """(native?, why) for a CPU."""
    if not (facts.avx512_bf16 or facts.amx):
        return False, "this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated (many times slower)"
    units = " and ".join(name for name, has in (("AVX512-BF16", facts.avx512_bf16), ("AMX", facts.amx)) if has)
    cap = facts.onednn_cap
    if cap not in ONEDNN_UNCAPPED and (cap not in ONEDNN_ISAS or
                                       ONEDNN_ISAS.index(cap) < ONEDNN_ISAS.index("AVX512_CORE_BF16")):
        return False, (f"the CPU has {units}, but ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below AVX512_CORE_BF16, "
                       "so its bf16 convolutions would be emulated")
    level = facts.aten_capability
    if level in ATEN_LEVELS and ATEN_LEVELS.index(level) < ATEN_LEVELS.index("avx512"):
        return False, (f"the CPU has {units}, but torch's kernels run at {level.upper()} "
                       "(ATEN_CPU_CAPABILITY), where bf16 is emulated")
    return True, f"the CPU runs bf16 natively ({units})"


def cuda_native_bf16(device: torch.device) -> tuple[bool, str]:
    name = torch.cuda.get_device_name(device)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"{name} runs bf16 natively"
    return False, f"{name} has no native bf16"


def native_bf16(device: torch.device, facts: CpuFacts | None = None) -> tuple[bool, str]:
    if device.type == "cuda":
        return cuda_native_bf16(device)
    if device.type == "cpu":
        return cpu_native_bf16(facts or cpu_facts())
    return False, f"bf16 support on {device.type} is not known"


def choose(requested: str, device: torch.device, facts: CpuFacts | None = None) -> PrecisionChoice:
    """The precision a run uses for --precision `requested` on `device`."""
    if requested == "fp32":
        return PrecisionChoice("fp32", "--precision fp32 (the reference's numerics)")
    native, why = native_bf16(device, facts)
    if requested == "bf16":
        if native:
            return PrecisionChoice("bf16", f"--precision bf16; {why}")
        return PrecisionChoice("bf16", f"--precision bf16, although {why}", emulated=True)
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}: choose from {', '.join(CHOICES)}")
    if native:
        return PrecisionChoice("bf16", f"auto: {why}, so the forward pass runs in bf16 autocast")
    return PrecisionChoice("fp32", f"auto: {why}; fp32 is the fast choice here")


def announce(choice: PrecisionChoice) -> str:
    """The run's first line about precision; warns once when bf16 is forced onto emulating hardware."""
    if choice.emulated:
        warnings.warn(f"--precision bf16 on hardware without native bf16: it is emulated and many times slower "
                      f"than fp32 ({choice.reason}). Use --precision auto or fp32 unless you are testing bf16.",
                      stacklevel=2)
    return f"Precision: {choice.name} ({choice.reason})."
