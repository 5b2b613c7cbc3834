"""edgecls: image classification for edge NPUs (train, evaluate, export to ONNX, serve)."""

__version__ = "0.1.0"
