"""edgecls: image classification for edge NPUs (train, evaluate, export to ONNX, serve)."""

from edgecls.threads import prefer_passive_wait

prefer_passive_wait()  # before any import of torch: libgomp reads OMP_WAIT_POLICY once (edgecls/threads.py)

__version__ = "0.1.0"
