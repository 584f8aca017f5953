"""nfpsim: Near-Free Parallelism of LLM decode forwards, a serving simulator and a co-design explorer."""

__version__ = "0.1.0"

# Imported on first use, so that ``import nfpsim`` stays free of torch.
_LAZY = {"capture": "nfpsim.capture", "OpGraph": "nfpsim.capture", "CaptureError": "nfpsim.capture",
         "latency_model": "nfpsim.capture"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nfpsim' has no attribute {name!r}")
