"""INT8 in ONNX Runtime: every Linear quantized, the same answers as FP32, a graph built once."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from model_service import onnx_int8
from model_service.classifier import IntentClassifier
from model_service.moe import MixtureOfExperts


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    # Shapes unlike the export's example (2 x 8): the graph's batch and sequence axes are dynamic.
    ids = torch.tensor([[99, 5, 6, 7, 8, 9, 10, 11, 12, 98], [99, 13, 14, 98, 0, 0, 0, 0, 0, 0],
                        [99, 15, 16, 17, 98, 0, 0, 0, 0, 0]])  # fmt: skip
    return ids, (ids != 0).long()


def test_every_linear_runs_as_a_quantized_matmul_and_none_stays_fp32(tiny_model: IntentClassifier) -> None:
    # Upcycled experts start as copies of one dense layer (IntentClassifier.from_bert), and the
    # exporter shares identical weights through Identity nodes, which ORT's quantizer skips.
    with torch.no_grad():
        for module in tiny_model.modules():
            if isinstance(module, MixtureOfExperts):
                for expert in module.expert_list[1:]:
                    expert.load_state_dict(module.expert_list[0].state_dict())

    classifier = onnx_int8.build(tiny_model, key="every-linear")

    graph = onnx.load(str(classifier.path)).graph
    integer_ops = ("DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat")
    quantized = [n for n in graph.node if n.op_type in integer_ops]
    linears = sum(isinstance(m, nn.Linear) for m in tiny_model.modules())
    assert not [n.name for n in graph.node if n.op_type == "Gemm"]
    assert len(quantized) == linears


def test_answers_match_fp32_with_padding_and_other_shapes(tiny_model: IntentClassifier) -> None:
    ids, mask = _batch()
    classifier = onnx_int8.build(tiny_model, key="answers")

    with torch.inference_mode():
        expected, got = tiny_model(ids, mask), classifier(ids, mask)

    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert torch.allclose(got, expected, atol=0.05 * float(expected.abs().max()))


def test_a_query_gets_the_same_answer_alone_as_beside_longer_queries(tiny_model: IntentClassifier) -> None:
    ids, mask = _batch()
    classifier = onnx_int8.build(tiny_model, key="alone")

    with torch.inference_mode():
        together = classifier(ids, mask)[1]
        alone = classifier(ids[1:2, :4], mask[1:2, :4])[0]

    # Activations are quantized per batch, so a batch-mate may move the scale a little; the masking
    # and the MoE's routing must not let it change more than that.
    assert torch.allclose(alone, together, atol=0.05 * float(together.abs().max()))


def test_a_graph_is_built_once_per_key_and_reused(
    tiny_model: IntentClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEAKGUARD_INT8_CACHE", str(tmp_path / "cache"))
    first = onnx_int8.build(tiny_model, key="reuse", threads=1)

    def no_export(*_args: object) -> None:
        raise AssertionError("exported again although the graph was cached")

    monkeypatch.setattr(onnx_int8, "_export", no_export)
    second = onnx_int8.build(tiny_model, key="reuse", threads=1)

    assert second.path == first.path and first.path.parent == tmp_path / "cache"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.path.name], "no staging file left behind"
    assert first.threads == 1
    with pytest.raises(AssertionError, match="exported again"):
        onnx_int8.build(tiny_model, key="another-key")


def test_an_unwritable_cache_builds_in_a_temporary_folder_instead_of_failing(
    tiny_model: IntentClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("PEAKGUARD_INT8_CACHE", str(blocked))
    ids, mask = _batch()

    classifier = onnx_int8.build(tiny_model, key="blocked")

    assert not classifier.path.exists(), "the temporary folder is gone; the session holds the graph"
    with torch.inference_mode():
        assert (classifier(ids, mask).argmax(-1) == tiny_model(ids, mask).argmax(-1)).all()


def test_a_failed_build_leaves_no_partial_file_in_the_cache(
    tiny_model: IntentClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEAKGUARD_INT8_CACHE", str(tmp_path))

    def broken_quantize(_source: Path, _target: Path) -> None:
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(onnx_int8, "_quantize", broken_quantize)
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        onnx_int8.build(tiny_model, key="broken")

    assert list(tmp_path.iterdir()) == []


def test_a_model_in_training_is_exported_as_in_eval_and_left_training(tiny_model: IntentClassifier) -> None:
    ids, mask = _batch()
    with torch.inference_mode():
        expected = tiny_model.eval()(ids, mask)
    tiny_model.train()

    classifier = onnx_int8.build(tiny_model, key="training")

    assert tiny_model.training, "the caller's model must keep its mode (no copy is taken)"
    with torch.inference_mode():
        assert (classifier(ids, mask).argmax(-1) == expected.argmax(-1)).all()
