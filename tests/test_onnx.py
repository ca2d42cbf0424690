"""``torch.onnx.export`` of a model as it is (no :func:`gconv_triton.export_model` first), with both exporters:
inside an ONNX export the layers emit the reference path's standard ops (filter bank gather, ``Conv`` /
``ConvTranspose``; for tap convolutions the receptive fields unfolded, tapped and reduced) instead of the
package's custom ops, which ONNX does not know.

The exported graph is run with ONNX's reference evaluator and compared with the float64 reference.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import assert_close, clear_caches, torch_backend
from usertap import TAN, tan_d, tan_fn
from torch import nn

import gconv_triton as gt
from gconv_triton.functional import gconv2d, gconv_transpose2d, shared_kernel_conv2d

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


# ------------------------------------------------------------------------------------------- tap convolutions
def _numpy_tan(x, w):  # computes the same, but outside PyTorch: no operator an exporter could write
    return torch.from_numpy(np.tan((x + w).numpy()))


NUMPY_TAN = gt.TapFunction("numpy_tan", _numpy_tan, tan_fn, tan_d, tan_d)


class _Taps(nn.Module):
    """Tap layers: an adder lifting to p4, max-plus p4 with ``"ignore"`` padding, a grouped strided erosion on
    the flattened map, a user tap's product with reflect padding, and the 1-D layer (l2 / min)."""

    def __init__(self, tap=TAN):
        super().__init__()
        self.adder = gt.TapConv2d(1, 3, 3, tap="adder", padding=1, group="p4", in_group="z2")
        self.maxplus = gt.TapConv2d(3, 2, 3, tap="add", reduce="max", padding=1, group="p4", in_group="p4",
                                    padding_mode="ignore")
        self.erosion = gt.TapConv2d(8, 4, 2, tap="sub", reduce="min", stride=2, groups=2)
        self.user = gt.TapConv2d(4, 2, 2, tap=tap, reduce="prod", padding=1, padding_mode="reflect")
        self.l2 = gt.TapConv1d(2, 3, 3, tap="l2", reduce="min", padding=1)

    def forward(self, x):
        y = self.maxplus(self.adder(x) / 5)   # (a scalar such as 0.2 the dynamo exporter writes in float32)
        y = torch.tanh(self.erosion(y.flatten(1, 2)))
        y = self.user(y)
        return self.l2(y.flatten(2, 3))


def _evaluate(proto, x: torch.Tensor) -> torch.Tensor:
    onnx.checker.check_model(proto)
    (got,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})
    return torch.from_numpy(got)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_onnx_export_of_tap_layers(exporter):
    """Built-in taps and a user tap whose ``torch_fn`` is standard operators export with either exporter, as the
    model is and after ``export_model``; the ONNX output matches the float64 model (float32 export), and a
    float64 export matches it to round-off."""
    torch.manual_seed(0)
    model = _Taps().eval()
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        want = model.double()(x.double())
        model.float()
    exported = gt.export_model(model)
    assert [type(m).__name__ for m in exported.children()] == ["ExportedTapConv"] * 5
    for what, candidate in (("the model", model), ("export_model", exported)):
        proto = onnx.load_from_string(_export(candidate, x, exporter))
        assert not any(node.domain.startswith("gconv_triton") for node in proto.graph.node)
        assert_close(_evaluate(proto, x).reshape(want.shape), want, torch.float32, f"{exporter} {what}")
    proto = onnx.load_from_string(_export(model.double(), x.double(), exporter))  # float64: round-off only
    assert_close(_evaluate(proto, x.double()).reshape(want.shape), want, torch.float64, f"{exporter} float64")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_tap_layer_without_standard_ops_names_the_layer(exporter):
    """A user tap computed outside PyTorch (numpy) has no standard-operator form: ONNX export and
    ``export_model`` fail naming the layer and why, instead of writing a constant or an unknown operator."""
    model = _Taps(tap=NUMPY_TAN).eval()
    x = torch.randn(2, 1, 6, 6)
    why = "TapFunction 'numpy_tan' has no such form: tracing torch_fn on fake tensors failed"
    with pytest.raises(Exception, match=r"TapConv2d\(4, 2, kernel_size=\(2, 2\), tap='numpy_tan'.*" + why):
        _export(model, x, exporter)
    with pytest.raises(ValueError, match="^layer 'user' .*TapConv2d.*" + why):
        gt.export_model(model)
