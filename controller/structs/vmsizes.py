"""GPUs per node of Azure VM sizes, so a cluster's GPU capacity is known before it exists.

Figures from Azure's N-series size pages. Sizes not listed here have no GPUs unless a manifest
says otherwise with ``gpusPerNode``.
"""

from __future__ import annotations

from typing import Final

GPUS_PER_VM_SIZE: Final[dict[str, int]] = {
    # NC (K80)
    "standard_nc6": 1, "standard_nc12": 2, "standard_nc24": 4, "standard_nc24r": 4,
    # NCv2 (P100)
    "standard_nc6s_v2": 1, "standard_nc12s_v2": 2, "standard_nc24s_v2": 4, "standard_nc24rs_v2": 4,
    # NCv3 (V100)
    "standard_nc6s_v3": 1, "standard_nc12s_v3": 2, "standard_nc24s_v3": 4, "standard_nc24rs_v3": 4,
    # NCasT4_v3 (T4)
    "standard_nc4as_t4_v3": 1, "standard_nc8as_t4_v3": 1, "standard_nc16as_t4_v3": 1, "standard_nc64as_t4_v3": 4,
    # NC A100 v4
    "standard_nc24ads_a100_v4": 1, "standard_nc48ads_a100_v4": 2, "standard_nc96ads_a100_v4": 4,
    # ND (P40)
    "standard_nd6s": 1, "standard_nd12s": 2, "standard_nd24s": 4, "standard_nd24rs": 4,
    # NDv2 (V100 NVLink), ND A100 v4, ND H100 v5
    "standard_nd40rs_v2": 8, "standard_nd96asr_v4": 8, "standard_nd96amsr_a100_v4": 8, "standard_nd96isr_h100_v5": 8,
    # NV (M60), NVv3
    "standard_nv6": 1, "standard_nv12": 2, "standard_nv24": 4,
    "standard_nv12s_v3": 1, "standard_nv24s_v3": 2, "standard_nv48s_v3": 4,
}


def gpus_per_node(vm_size: str) -> int:
    """GPUs on one node of ``vm_size`` (case-insensitive); 0 for sizes without GPUs or not in the table."""
    return GPUS_PER_VM_SIZE.get(vm_size.strip().lower(), 0)


def is_known_gpu_size(vm_size: str) -> bool:
    """Whether ``vm_size`` is an N-series size this table knows."""
    return vm_size.strip().lower() in GPUS_PER_VM_SIZE
