import pytest
import torch
from dmlt_trainer.model import TabularNet, count_parameters
from torch import nn

pytestmark = pytest.mark.unit


def test_output_is_one_logit_per_row():
    model = TabularNet(50, [512, 256, 128], 0.2)
    assert model(torch.randn(32, 50)).shape == (32,)


def test_each_hidden_layer_is_linear_batchnorm_gelu_dropout():
    model = TabularNet(10, [8, 4], 0.3)
    kinds = [type(m) for m in model.body]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout] * 2
    assert model.body[0].out_features == 8 and model.body[4].out_features == 4
    assert model.body[3].p == 0.3 and model.head.out_features == 1


def test_parameter_count():
    # (10*8+8) + 2*8 + (8*4+4) + 2*4 + (4+1)
    assert count_parameters(TabularNet(10, [8, 4], 0.0)) == 88 + 16 + 36 + 8 + 5
