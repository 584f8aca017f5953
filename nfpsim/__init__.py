"""nfpsim: Near-Free Parallelism of LLM decode forwards, a serving simulator and a co-design explorer."""

__version__ = "0.1.0"
