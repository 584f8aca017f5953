"""Validation: real decode forwards timed on a GPU against the latency model's predictions.

``model`` holds random weights and a KV cache for a :class:`~nfpsim.config.ModelSpec`, ``forward`` builds
one decode forward from them in two implementations (our Triton kernels, the vendor torch path) with
exactly the ops :func:`nfpsim.shapes.decompose` prices, ``run`` times forwards over a position grid and
compares them with the predictions, ``plot`` draws the overlays. Only ``nfpsim.cli.validate`` writes files.
"""
