"""The prototype head: a feature graph plus nearest-prototype scoring, in operators every NPU profile runs.

    f       = backbone features (N x D, raw, not normalised)
    scores  = Gemm(f, P, transB=1)          N x C, P = unit prototypes (C x D)
    sqnorm  = Gemm(Mul(f, f), ones(D, 1))   N x 1, |f|^2

The chip has no Div / Sqrt / Softmax (kl520), so the host finishes: cos = scores / sqrt(sqnorm) and
probabilities = softmax(temperature * cos) (`host_tail`, which the Predictor applies). argmax(scores) is
already argmax(cos), since every class of one image shares the same |f|, so a bare ONNX Runtime user ranks
classes correctly without the tail.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecls.embed.features import EPS, l2_normalize
from edgecls.predict import softmax

SCORES, SQNORM = "scores", "sqnorm"
DEFAULT_TEMPERATURE = 10.0


def host_tail(scores: np.ndarray, sqnorm: np.ndarray, temperature: float) -> np.ndarray:
    """N x C softmax(temperature * cosine) from the graph's two outputs."""
    scores = np.asarray(scores, np.float64).reshape(len(scores), -1)
    norm = np.sqrt(np.maximum(np.asarray(sqnorm, np.float64).reshape(len(scores), 1), EPS * EPS))
    return softmax(float(temperature) * scores / norm)


def reference_probs(features: np.ndarray, prototypes: np.ndarray, temperature: float) -> np.ndarray:
    """The same probabilities from torch features directly (normalise, cosine, scale, softmax): verification's
    reference."""
    import torch
    import torch.nn.functional as F

    f = F.normalize(torch.from_numpy(np.asarray(features, np.float64)), dim=1)
    p = torch.from_numpy(np.asarray(prototypes, np.float64))
    return torch.softmax(float(temperature) * (f @ p.T), dim=1).numpy()


def add_prototype_head(model: onnx.ModelProto, prototypes: np.ndarray) -> onnx.ModelProto:
    """Replace a feature graph's single output (N x D, or N x D x 1 x 1) by `scores` and `sqnorm`, in place."""
    graph = model.graph
    if len(graph.output) != 1:
        raise ValueError(f"a feature graph has one output, this one {len(graph.output)}")
    protos = l2_normalize(prototypes).astype(np.float32)
    classes, dim = protos.shape
    feat = graph.output[0].name
    dims = [d.dim_value or d.dim_param for d in graph.output[0].type.tensor_type.shape.dim]
    batch = dims[0] if dims else 1
    nodes = []
    if len(dims) != 2:
        nodes.append(helper.make_node("Flatten", [feat], ["proto_features"], name="proto_flatten", axis=1))
        feat = "proto_features"
    graph.initializer.extend(
        [
            numpy_helper.from_array(protos, "proto_matrix"),
            numpy_helper.from_array(np.ones((dim, 1), np.float32), "proto_ones"),
        ]
    )
    nodes += [
        helper.make_node("Gemm", [feat, "proto_matrix"], [SCORES], name="proto_scores", transB=1),
        helper.make_node("Mul", [feat, feat], ["proto_squares"], name="proto_square"),
        helper.make_node("Gemm", ["proto_squares", "proto_ones"], [SQNORM], name="proto_sqnorm"),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, [batch, classes]),
            helper.make_tensor_value_info(SQNORM, TensorProto.FLOAT, [batch, 1]),
        ]
    )
    return model
