"""Structured pruning and INT8: both make a really smaller model that still answers the same."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from model_service.classifier import IntentClassifier
from model_service.pruning import prune_channels, prune_heads
from model_service.quantization import QuantizationUnavailableError, quantize_int8


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 11, 12, 13]])
    return ids, (ids != 0).long()


def _silence_channels(model: IntentClassifier, silent: list[int]) -> None:
    """Every expert's channels `silent` write nothing (their `down` columns are zero)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.in_features == model.config.intermediate:
                module.weight[:, silent] = 0.0


def test_channel_pruning_removes_the_silent_channels_and_answers_exactly_as_before(
    tiny_model: IntentClassifier,
) -> None:
    ids, mask = _inputs()
    width = tiny_model.config.intermediate
    _silence_channels(tiny_model, [0, 7, width - 1])

    pruned = prune_channels(tiny_model, width - 3)

    assert pruned.config.intermediate == width - 3
    assert tiny_model.config.intermediate == width, "the original must be left alone"
    with torch.no_grad():
        assert torch.allclose(pruned(ids, mask), tiny_model(ids, mask), atol=1e-5)
    # The config says the shapes: a model built from it takes the pruned weights (how artifacts load).
    IntentClassifier(pruned.config).load_state_dict(pruned.state_dict())


def test_head_pruning_removes_the_silent_heads_and_answers_exactly_as_before(tiny_model: IntentClassifier) -> None:
    ids, mask = _inputs()
    size = tiny_model.config.attention_dim // tiny_model.config.heads
    with torch.no_grad():
        for block in tiny_model.block_list:
            block.attention.output.weight[:, 1 * size : 2 * size] = 0.0  # head 1 writes nothing

    pruned = prune_heads(tiny_model, tiny_model.config.heads - 1)

    assert (pruned.config.heads, pruned.config.attention_dim) == (3, 3 * size)
    assert pruned.parameter_count() < tiny_model.parameter_count()
    with torch.no_grad():
        assert torch.allclose(pruned(ids, mask), tiny_model(ids, mask), atol=1e-5)
    IntentClassifier(pruned.config).load_state_dict(pruned.state_dict())


@pytest.mark.parametrize(("prune", "keep", "message"), [
    (prune_channels, 0, "can keep 1 to 47 of 48 feed-forward channels"),
    (prune_channels, 48, "can keep 1 to 47"),
    (prune_heads, 4, "can keep 1 to 3 of 4 attention heads"),
])  # fmt: skip
def test_a_pruning_that_would_keep_nothing_or_everything_is_named(
    tiny_model: IntentClassifier, prune: Any, keep: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        prune(tiny_model, keep)


def test_torch_int8_copy_quantizes_every_linear_and_agrees_with_fp32(tiny_model: IntentClassifier) -> None:
    ids, mask = _inputs()

    quantized = quantize_int8(tiny_model, backend="torch")

    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    fp32_linears = sum(type(m) is nn.Linear for m in tiny_model.modules())
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    assert sum(isinstance(m, DynamicInt8Linear) for m in quantized.modules()) == fp32_linears
    with torch.no_grad():
        assert (quantized(ids, mask).argmax(-1) == tiny_model(ids, mask).argmax(-1)).all()
    assert any(isinstance(m, nn.Linear) for m in tiny_model.modules()), "the original must stay FP32"
    assert torch.backends.quantized.engine in ("x86", "fbgemm")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_int8_of_a_trained_moe_model_can_be_taken_after_training_steps(
    tiny_model: IntentClassifier, backend: Any
) -> None:
    # The last training step leaves the MoE's load-balancing loss (and its graph) on the model: the
    # torch path must still deep-copy it and the ONNX path still export it, straight after training.
    ids, mask = _inputs()
    untrained = {name: value.clone() for name, value in tiny_model.state_dict().items()}
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
    tiny_model.train()
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(tiny_model(ids, mask), torch.tensor([1, 3])) + tiny_model.aux_loss()
        torch.autograd.backward(loss)
        optimizer.step()
    tiny_model.eval()
    trained = {name: value.clone() for name, value in tiny_model.state_dict().items()}
    assert any(not torch.equal(untrained[name], value) for name, value in trained.items())

    quantized = quantize_int8(tiny_model, backend=backend)

    assert all(torch.equal(trained[name], value) for name, value in tiny_model.state_dict().items())
    with torch.no_grad():
        fp32, int8 = tiny_model(ids, mask), quantized(ids, mask)
    # It answers as the trained model does, not as the untrained one it started from.
    assert int8.argmax(-1).tolist() == fp32.argmax(-1).tolist() == [1, 3]
    assert torch.allclose(int8, fp32, atol=0.1), (int8 - fp32).abs().max()


def test_unknown_device_is_refused_by_name(tiny_model: IntentClassifier) -> None:
    with pytest.raises(QuantizationUnavailableError, match="no INT8 path for device 'mps'"):
        quantize_int8(tiny_model, device="mps")


def test_cuda_without_torchao_names_what_is_missing(tiny_model: IntentClassifier) -> None:
    with pytest.raises(QuantizationUnavailableError, match="needs torchao"):
        quantize_int8(tiny_model, device="cuda")


def test_unknown_cpu_backend_is_refused_by_name(tiny_model: IntentClassifier) -> None:
    with pytest.raises(QuantizationUnavailableError, match="no INT8 backend 'openvino'"):
        quantize_int8(tiny_model, backend="openvino")  # type: ignore[arg-type]
