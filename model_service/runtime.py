"""The loaded models and the path a batch takes through them: preprocess -> infer -> postprocess.

Both models (full, light) are loaded from one artifact version in both precisions (FP32 and an
INT8 copy) before the service reports ready, and each runs a warm-up batch, so a mode switch
never pays a cold start (the outage's cold nodes served at 18% of warm ones). A model version
named in the mode is loaded beside the current one and swapped in only once it has warmed up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model_service import handover
from model_service.artifacts import ArtifactError, ModelCard, load_model
from model_service.classifier import IntentClassifier
from model_service.modes import ModelName, OperatingMode, Precision
from model_service.pretrained import Batch, TextEncoder
from model_service.quantization import quantize_int8

__all__ = ["BatchTimings", "ModelRuntime", "Prediction", "StageTimer", "postprocess"]

log = logging.getLogger("peakguard.runtime")

HANDOVER_INTENT = "handover_to_human"
"""What an out-of-scope query is answered with."""

_WARM_UP_TEXTS = ("I am still waiting on my card?", "How do I top up my account with a bank transfer today?")


@dataclass(frozen=True)
class Prediction:
    intent: str
    confidence: float
    handover: bool
    """True when the query looks out of scope (model_service.handover): a human takes it."""
    model: str
    precision: str
    version: str


@dataclass(frozen=True)
class BatchTimings:
    batch: float
    """Seconds to pad the token ids into tensors."""
    model: float
    post: float
    started: float
    """time.time() when the batch began, for tracing spans."""


StageTimer = Callable[[str, float], None]


@dataclass
class _Variant:
    module: nn.Module
    card: ModelCard


class ModelRuntime:
    def __init__(
        self,
        root: Path,
        version: str,
        *,
        encoder: TextEncoder | None = None,
        layer_sample_every: int = 20,
        on_layer_time: Callable[[str, str, float], None] | None = None,
        device: str = "auto",
        chaos: bool = False,
    ) -> None:
        """Load `root/version`. `layer_sample_every`: time each layer on one batch in this many
        (forward hooks cost a little, so not on every batch); `on_layer_time(model, layer, s)`.
        `device`: cpu, cuda[:n], or auto (cuda when torch sees a GPU). `chaos`: layers can be slowed
        (`slow_layer`, for drills); without it no delay hook is on the forward path at all."""
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.root = root
        self.encoder = encoder or TextEncoder()
        self._layer_sample_every = max(1, layer_sample_every)
        self._on_layer_time = on_layer_time
        self._batches = 0
        # Whether this thread's current batch is timed layer by layer: full and light run on
        # threads of their own, and one's sampled batch must not time the other's layers.
        self._local = threading.local()
        self._switching_to: str | None = None
        self._lock = threading.Lock()
        self._chaos = chaos
        self._layer_delays: dict[str, float] = {}
        """Chaos (a drill's slow layer): seconds added before a layer runs, by layer label, every model."""
        self._slow_down = 1.0
        """Chaos (a drill's cold replica): every layer takes this many times its time."""
        self.version = version
        self._variants = self._load(version)
        self.ready = False
        self.last_error: str | None = None

    def _load(self, version: str) -> dict[tuple[str, str], _Variant]:
        folder = self.root / version
        variants: dict[tuple[str, str], _Variant] = {}
        for name in ("full", "light"):
            model, card = load_model(folder, name)
            # INT8 from the CPU copy: ONNX Runtime on CPU, torchao weight-only on CUDA.
            int8 = quantize_int8(model, device=self.device, key=card.weights_sha256)
            model = model.to(self.device)
            self._hook_layers(name, model)
            if self._chaos:
                for module in (model, int8):
                    self._hook_delays(module)
            variants[(name, "fp32")] = _Variant(model, card)
            variants[(name, "int8")] = _Variant(int8, card)
        return variants

    def _hook_delays(self, model: nn.Module) -> None:
        if not hasattr(model, "block_list"):
            # A compiled graph (INT8 in ONNX Runtime) has no layers to hook: the slowed layer's delay
            # comes before the whole forward, the same seconds on every batch, and a slow-down
            # stretches the whole forward.
            def delay_all(_module: nn.Module, _inputs: object) -> None:
                seconds = sum(self._layer_delays.values())
                if seconds:
                    time.sleep(seconds)
                self._stretch_start("all")

            model.register_forward_pre_hook(delay_all)
            model.register_forward_hook(lambda _m, _i, _o: self._stretch("all"), prepend=True)
            return
        blocks: list[nn.Module] = getattr(model, "block_list")  # noqa: B009 (an IntentClassifier's or a quantized copy's)
        layers = [*((f"block{i}", block) for i, block in enumerate(blocks)), ("head", getattr(model, "head"))]  # noqa: B009
        for label, module in layers:

            def delay(_module: nn.Module, _inputs: object, label: str = label) -> None:
                seconds = self._layer_delays.get(label)
                if seconds:
                    self._synchronize()
                    time.sleep(seconds)
                self._stretch_start(label)

            def stretch(_module: nn.Module, _inputs: object, _output: object, label: str = label) -> None:
                self._stretch(label)

            module.register_forward_pre_hook(delay)
            # Before the layer-time hook (registered first), so the sampled time includes the stretch.
            module.register_forward_hook(stretch, prepend=True)

    def _stretch_start(self, label: str) -> None:
        if self._slow_down > 1.0:
            self._synchronize()
            starts: dict[str, float] = self._local.__dict__.setdefault("stretch_starts", {})
            starts[label] = time.perf_counter()

    def _stretch(self, label: str) -> None:
        """Chaos: the layer just run takes `slow_down` times as long (the rest of it slept)."""
        factor = self._slow_down
        started = self._local.__dict__.get("stretch_starts", {}).pop(label, None)
        if factor > 1.0 and started is not None:
            self._synchronize()
            time.sleep((factor - 1.0) * (time.perf_counter() - started))

    def layers(self) -> list[str]:
        """The layer labels every model has (block0.., head), as the per-layer metrics name them."""
        # FP32 variants only: an INT8 graph in ONNX Runtime has no layers of its own.
        blocks = min(len(getattr(v.module, "block_list", [])) for (_, p), v in self._variants.items() if p == "fp32")
        return [*(f"block{i}" for i in range(blocks)), "head"]

    def slow_layer(self, layer: str | None, seconds: float = 0.0) -> None:
        """Chaos for drills: every model's `layer` sleeps `seconds` before it runs, on every batch, until
        called with None. The layer-time metrics see it, as they would a throttled or faulty GPU."""
        if not self._chaos:
            raise ValueError("this runtime was loaded without chaos: no layer can be slowed")
        if layer is None:
            self._layer_delays = {}
            return
        if layer not in self.layers():
            raise ValueError(f"no layer {layer!r}; the layers are {', '.join(self.layers())}")
        if not 0 < seconds <= 10:
            raise ValueError(f"seconds must be in (0, 10], got {seconds}")
        self._layer_delays = {layer: seconds}

    @property
    def slowed(self) -> dict[str, float]:
        return dict(self._layer_delays)

    def slow_down(self, factor: float) -> None:
        """Chaos for drills: every layer of every model takes `factor` times its time (1 ends it), as
        a cold replica's does while its caches fill (the seed's cold nodes ran at 18% of warm ones)."""
        if not self._chaos:
            raise ValueError("this runtime was loaded without chaos: nothing can be slowed down")
        if not 1.0 <= factor <= 20.0:
            raise ValueError(f"factor must be in [1, 20] (1 ends the slow-down), got {factor}")
        self._slow_down = float(factor)

    @property
    def slowed_down(self) -> float:
        return self._slow_down

    def _hook_layers(self, name: str, model: IntentClassifier) -> None:
        layers: list[tuple[str, nn.Module]] = [(f"block{i}", block) for i, block in enumerate(model.block_list)]
        layers.append(("head", model.head))
        starts: dict[str, float] = {}
        for label, module in layers:

            def before(_module: nn.Module, _inputs: object, label: str = label) -> None:
                if self._sampling:
                    self._synchronize()
                    starts[label] = time.perf_counter()

            def after(_module: nn.Module, _inputs: object, _output: object, label: str = label) -> None:
                if self._sampling and label in starts and self._on_layer_time is not None:
                    self._synchronize()
                    self._on_layer_time(name, label, time.perf_counter() - starts.pop(label))

            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)

    @property
    def _sampling(self) -> bool:
        return bool(getattr(self._local, "sampling", False))

    def _synchronize(self) -> None:
        # CUDA kernels run asynchronously: without a sync a layer's time would be its launch time.
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def card(self, model: ModelName) -> ModelCard:
        return self._variants[(model, "fp32")].card

    def warm_up(self) -> None:
        """Run a batch through every variant; only then is the service ready."""
        for (name, precision), variant in self._variants.items():
            started = time.perf_counter()
            self._forward(variant.module, self.encoder(list(_WARM_UP_TEXTS)))
            log.info("warmed %s/%s in %.2f s", name, precision, time.perf_counter() - started)
        self.ready = True

    def switch_version(self, version: str) -> None:
        """Load and warm `version`, then swap it in; on failure keep serving the current one."""
        with self._lock:
            # A mode re-applied while its version is still loading must not load it a second time.
            if version in ("", self.version, self._switching_to):
                return
            self._switching_to = version
        try:
            variants = self._load(version)
            batch = self.encoder(list(_WARM_UP_TEXTS))
            for variant in variants.values():
                self._forward(variant.module, batch)
        except (ArtifactError, OSError, RuntimeError) as exc:
            with self._lock:
                self._switching_to = None
                self.last_error = f"cannot switch to model version {version!r}: {exc}"
            log.error("%s", self.last_error)
            return
        with self._lock:
            self._variants, self.version = variants, version
            self._switching_to = None
            self.last_error = None
        log.warning("now serving model version %s", version)

    def _forward(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            logits = module(batch.input_ids.to(self.device), batch.attention_mask.to(self.device))
            return logits.float().cpu()

    def infer(self, sequences: Sequence[Sequence[int]], mode: OperatingMode) -> tuple[list[Prediction], BatchTimings]:
        """preprocess (pad) -> infer -> postprocess for one batch of token-id lists."""
        wall = time.time()
        with self._lock:
            variant = self._variants[(mode.model, mode.precision)]
            version = self.version
        t0 = time.perf_counter()
        batch = self.encoder.pad(sequences)
        t1 = time.perf_counter()
        self._batches += 1
        self._local.sampling = self._batches % self._layer_sample_every == 0 and mode.precision == "fp32"
        try:
            logits = self._forward(variant.module, batch)
        finally:
            self._local.sampling = False
        t2 = time.perf_counter()
        predictions = postprocess(logits, variant.card, model=mode.model, precision=mode.precision, version=version)
        t3 = time.perf_counter()
        return predictions, BatchTimings(batch=t1 - t0, model=t2 - t1, post=t3 - t2, started=wall)


def postprocess(
    logits: torch.Tensor, card: ModelCard, *, model: str, precision: Precision | str, version: str
) -> list[Prediction]:
    """Logits to answers: the top intent, or a hand-over when the in-scope score is under the card's threshold."""
    confidence, index = logits.softmax(dim=-1).max(dim=-1)
    in_scope = handover.score(logits)
    answers = []
    for score, label, fits in zip(confidence.tolist(), index.tolist(), in_scope.tolist(), strict=True):
        hand_over = fits < card.handover_threshold
        answers.append(
            Prediction(
                intent=HANDOVER_INTENT if hand_over else card.intents[label],
                confidence=round(score, 4),
                handover=hand_over,
                model=model,
                precision=str(precision),
                version=version,
            )
        )
    return answers
