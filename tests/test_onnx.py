"""``torch.onnx.export`` of a model as it is (no :func:`gconv_triton.export_model` first), with both exporters:
inside an ONNX export the layers emit the reference path's standard ops (filter bank gather, ``Conv`` /
``ConvTranspose``) instead of the package's custom ops, which ONNX does not know.

The exported graph is run with ONNX's reference evaluator and compared with the float64 reference.
"""

from __future__ import annotations

import io

import pytest
import torch
from helpers import assert_close, clear_caches, torch_backend
from torch import nn

import gconv_triton as gt
from gconv_triton.functional import gconv2d, shared_kernel_conv2d
from gconv_triton.layers import gconv_transpose2d

onnx = pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (pip install onnx)")
from onnx.reference import ReferenceEvaluator  # noqa: E402

EXPORTERS = ["dynamo", "torchscript"]


class _Functional(nn.Module):
    """Every functional op: lifting p4m with stride and fused relu, grouped and dilated p4m with fused silu,
    the transposed conv back up, a shared-kernel conv on the flattened map."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 1, 1, 3, 3) / 3)
        self.b1 = nn.Parameter(torch.randn(4))
        self.w2 = nn.Parameter(torch.randn(4, 2, 8, 3, 3) / 12)
        self.wt = nn.Parameter(torch.randn(4, 2, 8, 3, 3) / 12)
        self.ws = nn.Parameter(torch.randn(1, 1, 3, 3) / 3)

    def forward(self, x):
        y = gconv2d(x, self.w1, self.b1, group="p4m", in_group="z2", stride=2, padding=1, activation="relu")
        y = gconv2d(y, self.w2, group="p4m", in_group="p4m", padding=2, dilation=2, groups=2, activation="silu")
        y = gconv_transpose2d(y, self.wt, group="p4m", stride=2, padding=1, output_padding=1)
        return shared_kernel_conv2d(y.flatten(1, 2), self.ws, padding=1)


def _layers():
    """The layers a user stacks: lifting, p4, the nn.Conv2d drop-in on the flattened map."""
    return nn.Sequential(gt.P4ConvZ2(1, 4, 3, padding=1), nn.ReLU(), gt.P4ConvP4(4, 2, 3, padding=1),
                         nn.Flatten(1, 2), gt.Conv2d(8, 3, 3, padding=1))


def _export(model: nn.Module, x: torch.Tensor, exporter: str) -> bytes:
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript (pip install onnxscript)")
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=exporter == "dynamo")
    return f.getvalue()


@pytest.mark.parametrize("build", [_Functional, _layers], ids=["functional", "layers"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_onnx_export_of_the_model_as_it_is(exporter, build):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 1, 8, 8)
    clear_caches()  # exported before any eager call, as a user exports a trained checkpoint in a new process
    proto = onnx.load_from_string(_export(model, x, exporter))
    assert not any(node.domain.startswith("gconv_triton") for node in proto.graph.node)
    (got,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})
    with torch_backend(), torch.no_grad():
        want = model.double()(x.double())
    assert_close(torch.from_numpy(got).reshape(want.shape), want, torch.float32, f"{exporter} ONNX output")



@pytest.mark.parametrize("exporter", EXPORTERS)
def test_exported_graph_does_not_depend_on_warm_caches(exporter):
    """The filter-bank index is built once per weight shape and cached; built while an exporter traces (cold
    caches), it must enter the graph as the same one constant as when an eager call built it first, not as the
    ops that computed it."""
    torch.manual_seed(0)
    model, x = _layers().eval(), torch.randn(2, 1, 8, 8)
    clear_caches()
    cold = [node.op_type for node in onnx.load_from_string(_export(model, x, exporter)).graph.node]
    with torch.no_grad():
        model(x)
    warm = [node.op_type for node in onnx.load_from_string(_export(model, x, exporter)).graph.node]
    assert cold == warm
