"""A local stand-in of the AI/ML API for ``krea/krea-wan-14b/video-to-video`` that really transforms video.

It speaks the provider's HTTP contract, injects faults on demand and keeps a ledger of every
accepted (paid) generation, so clients can be tested end to end on one machine. It imports
nothing from ``flows`` or ``blocks``: it is the remote side.
"""

from .config import SandboxConfig
from .faults import FaultConfig, FaultRule
from .media import make_test_clip, probe_video
from .server import SandboxHandle, main, run_sandbox

__all__ = [
    "FaultConfig",
    "FaultRule",
    "SandboxConfig",
    "SandboxHandle",
    "main",
    "make_test_clip",
    "probe_video",
    "run_sandbox",
]
