"""Regularisers' weight gradients enter an engine's backward through `_InjectedGrads`: each weight
receives its precomputed gradient times the incoming gradient (fp16 loss scale, accumulation),
in the weight's own dtype. The engine-level exactness is in tests/test_stylenerf_engine.py;
there the incoming gradient is always 1 (fp16 needs a GPU), so the scaling is checked here."""
import torch

from nerffacespeech.train.engine import _InjectedGrads


def test_each_weight_receives_its_gradient_times_the_incoming_scale_in_its_dtype():
    weights = [torch.zeros(3, dtype=torch.bfloat16, requires_grad=True), torch.zeros(2, requires_grad=True)]
    grads = [torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16), torch.tensor([4.0, 5.0])]
    zero = _InjectedGrads.apply(grads, *weights)
    (zero * 8.0).backward()
    assert zero.item() == 0.0
    assert weights[0].grad.dtype == torch.bfloat16 and weights[0].grad.tolist() == [8.0, 16.0, 24.0]
    assert weights[1].grad.tolist() == [32.0, 40.0]
