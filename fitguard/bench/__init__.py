"""Building blocks of ``fitguard bench``: machine facts, FLOP counting, load generation, Triton
statistics, the reference pipelines and the report. Each piece is importable on its own so tests and
notebooks can reuse it; heavy packages (torch, onnxruntime, tritonclient) are imported inside functions.
"""
