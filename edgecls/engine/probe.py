"""The linear-probe start of LP-FT: before fine-tuning, the new head is fitted by logistic regression
(scikit-learn) on the frozen backbone's features of the training images, so fine-tuning starts from the
probe's solution instead of a random head (Kumar et al., ICLR 2022: a random head's large early gradients
are what distort the pretrained features).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from edgecls.engine.optim import head_module

MAX_IMAGES = 20_000  # a probe on more images changes little and costs a forward pass each
PROBE_C = 1.0  # scikit-learn's default inverse regularization


@torch.no_grad()
def features_and_labels(model: nn.Module, batches, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The head's input (the pooled features) for every batch, in eval mode."""
    head = head_module(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().float()))
    labels = []
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            model(x.to(device))
            labels.append(y.cpu())
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).cpu().numpy(), torch.cat(labels).numpy()


def fit_head(model: nn.Module, batches, device: torch.device, num_classes: int) -> float:
    """Set the head's weights to a logistic regression on the features; returns its training accuracy."""
    from sklearn.linear_model import LogisticRegression

    x, y = features_and_labels(model, batches, device)
    present = np.unique(y)
    clf = LogisticRegression(C=PROBE_C, max_iter=3000).fit(x, y)
    coef, bias = clf.coef_, clf.intercept_
    if len(present) == 2:  # scikit-learn keeps one row for two classes: the softmax equivalent is +-half
        coef, bias = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    weight = np.zeros((num_classes, x.shape[1]), np.float32)
    full_bias = np.full(num_classes, -1e4, np.float32)  # a class with no training image is never predicted
    weight[present], full_bias[present] = coef, bias
    head = head_module(model)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).to(head.weight))
        head.bias.copy_(torch.from_numpy(full_bias).to(head.bias))
    return float(clf.score(x, y))
