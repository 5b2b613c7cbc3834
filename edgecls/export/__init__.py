"""Export: NPU surgery -> ONNX -> simplify -> graph passes -> [INT8] -> verify -> profile check."""
