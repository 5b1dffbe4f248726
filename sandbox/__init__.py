"""A local stand-in of the AI/ML API for ``krea/krea-wan-14b/video-to-video`` that really transforms video.

It speaks the provider's HTTP contract, injects faults on demand and keeps a ledger of every
accepted (paid) generation, so clients can be tested end to end on one machine. It imports
nothing from ``flows`` or ``blocks``: it is the remote side.

It needs what the runtime does not (numpy to transform frames, uvicorn and Starlette to serve), so
they come with the ``sandbox`` extra: ``pip install 'prefect-aimlapi-video[sandbox]'``. Without
it, importing the sandbox raises an ImportError whose message is that one line.
"""

SANDBOX_EXTRA = "pip install 'prefect-aimlapi-video[sandbox]'"
# Third-party packages the sandbox needs that the runtime dependencies do not guarantee.
_EXTRA_ONLY = frozenset({"numpy", "uvicorn", "starlette"})

try:
    from .config import SandboxConfig
    from .faults import FaultConfig, FaultRule
    from .media import make_test_clip, probe_video
    from .server import SandboxHandle, main, run_sandbox
except ImportError as exc:
    _missing = (exc.name or "").partition(".")[0]
    if _missing not in _EXTRA_ONLY:
        raise
    # one line, which the CLI prints as it is (`aimlapi-video sandbox`, `aimlapi-video demo`)
    raise ImportError(f"The sandbox needs {_missing}, which cannot be imported: {SANDBOX_EXTRA}", name=exc.name) from exc

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
