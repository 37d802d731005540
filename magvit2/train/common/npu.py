"""Ascend NPU support for the Lightning trainer (device type `npu` from torch_npu).

Lightning has no built-in NPU accelerator; this one maps devices to `torch.device("npu", i)`. With more than one
process the trainer uses DDP over HCCL, and mixed precision autocasts on the `npu` device type. The official
Open-MAGVIT2 models were trained this way (910B, bf16-mixed). The ops run the plain-torch reference on NPU.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator


def _torch_npu():
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except Exception as e:  # ImportError, or a missing CANN library such as libhccl.so
        raise ValueError(f"accelerator 'npu' needs torch_npu and the Ascend CANN runtime: {e}") from None
    return torch.npu


class NPUAccelerator(Accelerator):
    """Lightning accelerator for torch_npu devices."""

    def setup_device(self, device: torch.device) -> None:
        if device.type != "npu":
            raise ValueError(f"NPUAccelerator: expected an npu device, got {device}")
        _torch_npu().set_device(device)

    def teardown(self) -> None:
        pass

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        return {}

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        if devices in ("auto", -1, "-1"):
            return list(range(NPUAccelerator.auto_device_count()))
        if isinstance(devices, str):
            devices = [int(d) for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
        if isinstance(devices, int):
            if devices < 1:
                raise ValueError(f"trainer.devices must be >= 1 for npu, got {devices}")
            return list(range(devices))
        return [int(d) for d in devices]

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        return [torch.device("npu", i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        return _torch_npu().device_count()

    @staticmethod
    def is_available() -> bool:
        try:
            return bool(_torch_npu().is_available())
        except ValueError:
            return False

    @staticmethod
    def name() -> str:
        return "npu"


def npu_plugins(precision: str) -> list[Any]:
    """Mixed precision that autocasts on the npu device type (Lightning's default targets cuda/cpu)."""
    if precision in ("bf16-mixed", "16-mixed"):
        from lightning.pytorch.plugins.precision import MixedPrecision

        return [MixedPrecision(precision, device="npu")]
    return []
