"""`peakguard bench model`: the seed's optimisations measured side by side on this machine.

Everything is measured in one run, interleaved where it can be, because these machines are noisy
and only ratios taken together mean anything:

- model latency at batch 32 for full/light/pruned in FP32 and INT8 (interleaved repetitions,
  medians; INT8 as served, in ONNX Runtime, and the full model's torch INT8 beside it),
  parameter counts, and test accuracy from each model card (banking77 test split,
  measured by `peakguard train`; never tuned on), beside a TF-IDF + logistic-regression baseline;
- the real service (`peakguard serve` in a child process, pinned to core 0, the load generator on
  core 1): unloaded p99, the highest rate it sustains with p99 under its SLO, then 8x that rate
  with admission control on, with batches of one, and with admission control off.

The SLO is `slo_factor` x the unloaded p99 and the admission budget `budget_factor` x it, so the
run adapts to whatever machine it is on; both factors are printed with the results.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_service import machine
from model_service.artifacts import ArtifactError, ModelCard, load_model, newest_version, read_manifest
from model_service.datasets import IntentData, Split, load_banking77
from model_service.load_generator import P99_MIN_SAMPLES, SAMPLE_QUERIES, LoadSpec, invalid_because, run_load_sync
from model_service.pretrained import TextEncoder
from model_service.quantization import quantize_int8
from model_service.service_process import ServiceProcess

__all__ = [
    "PEERS",
    "SEED_MATRIX",
    "UNLOADED_RPS",
    "BenchSettings",
    "judge_goals",
    "measure_run",
    "median_latencies",
    "render",
    "run",
    "sustainable_rate",
    "unloaded_p99",
]

Log = Callable[[str], None]

SEED_MATRIX = {
    # optimisation: (latency change %, accuracy change in points), as the incident report gives them.
    "quantization": (-45.0, -1.2),
    "distillation": (-38.0, -0.8),
    "structured pruning": (-32.0, -0.5),
    "dynamic batching": (-28.0, 0.0),
}


@dataclass(frozen=True)
class BenchSettings:
    artifacts: Path
    """Artifact root written by `peakguard train`."""
    version: str = ""
    """Version folder to measure; empty means the newest."""
    data: Path | None = None
    """Data folder (banking77/): the TF-IDF baseline and realistic request texts. Optional."""
    batch: int = 32
    repeats: int = 20
    """Timed forwards per model variant (interleaved) in each repetition."""
    repetitions: int = 3
    """Whole runs (models, then the service); each figure is reported as their median and min-max."""
    service: bool = True
    """Also measure the HTTP service under load (a few minutes)."""
    confirm_samples: int = P99_MIN_SAMPLES
    """Answers the confirm of the sustainable rate is long enough for (a shorter one is judged invalid)."""
    overload_factor: float = 8.0
    slo_factor: float = 3.0
    """The service's SLO: p99 within this multiple of its unloaded p99."""
    budget_factor: float = 2.5
    """Admission latency budget as a multiple of the unloaded p99, under the SLO's 3x. Admission holds
    admitted p99 under its budget (calibrated, admission.py), so the budget may sit near the SLO: on
    one core at 8x (2026-12-07) a 2x budget (229 ms) answered 57/s with 5-s p99s of 179-220 ms, a 2.5x
    budget (285 ms) 63/s at 209-286 ms; batches grow with the budget, and so does throughput."""
    unloaded_seconds: float = 215.0
    """Length of the unloaded run (10 requests/s) that sets the p99 baseline: 2000 answers and a margin."""
    step_seconds: float = 8.0
    """Length of each step of the sustainable-rate search; the rate found is confirmed for 2000 answers."""
    overload_seconds: float = 120.0
    """Length of each overload run: batches of one answer about 18/s here, 2000 answers take 110 s."""
    start_rps: float = 10.0
    seed: int = 0
    serve_settings: tuple[tuple[str, Any], ...] = ()
    """More `peakguard serve` settings for every service the bench starts (e.g. batch_budget_share)."""
    peer: str = ""
    """A serving stack to measure beside the service (`ray-serve`), on the same cores, load and budget."""


def median_latencies(
    variants: dict[str, nn.Module], batch: tuple[torch.Tensor, torch.Tensor], repeats: int
) -> dict[str, float]:
    """Seconds per forward pass of each variant on the same batch; repetitions interleaved so
    machine noise hits every variant alike."""
    ids, mask = batch
    samples: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for module in variants.values():  # warm-up: first calls allocate and pick kernels
            module(ids, mask)
        for _ in range(repeats):
            for name, module in variants.items():
                started = time.perf_counter()
                module(ids, mask)
                samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def _per_query_latency(module: nn.Module, encoder: TextEncoder, texts: Sequence[str], batch: int) -> float:
    """Model seconds per query when `texts` run in batches of `batch`."""
    with torch.inference_mode():
        encoded = encoder(list(texts[:batch]))
        module(encoded.input_ids, encoded.attention_mask)
        started = time.perf_counter()
        for start in range(0, len(texts), batch):
            encoded = encoder(list(texts[start : start + batch]))
            module(encoded.input_ids, encoded.attention_mask)
        return (time.perf_counter() - started) / len(texts)


def _agreement(module: nn.Module, encoder: TextEncoder, texts: Sequence[str], batch: int) -> float:
    """Share of texts whose answer is the same alone as inside a padded batch (batching must not
    change answers: the MoE never drops tokens at inference)."""

    def answers(chunk: Sequence[str]) -> list[int]:
        encoded = encoder(list(chunk))
        result: list[int] = module(encoded.input_ids, encoded.attention_mask).argmax(-1).tolist()
        return result

    with torch.inference_mode():
        alone = [answers([text])[0] for text in texts]
        together = [label for start in range(0, len(texts), batch) for label in answers(texts[start : start + batch])]
    return sum(a == b for a, b in zip(alone, together, strict=True)) / len(texts)


def tfidf_baseline(intents: IntentData) -> dict[str, float]:
    """TF-IDF (word 1-2 grams) + logistic regression on the same train/test split: the floor any
    transformer on a GPU must beat."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise RuntimeError(f"the TF-IDF baseline needs scikit-learn: pip install 'peakguard[bench]' ({exc})") from None
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform(intents.train.texts + intents.validation.texts)
    classifier = LogisticRegression(C=20.0, max_iter=2000)
    classifier.fit(features, list(intents.train.labels) + list(intents.validation.labels))
    predicted = classifier.predict(vectorizer.transform(intents.test.texts))
    accuracy = float(sum(int(p == y) for p, y in zip(predicted, intents.test.labels, strict=True)) / len(predicted))
    return {"test_accuracy": accuracy, "seconds": time.perf_counter() - started}


def _measured_accuracy(variants: dict[str, nn.Module], test: Split, encoder: TextEncoder, log: Log) -> dict[str, float]:
    """Test accuracy of every variant as this run serves it: a card's INT8 figure was taken with
    whatever INT8 backend trained it, which may not be the one served now."""
    from model_service.training import accuracy, predict

    log(f"test accuracy of {len(variants)} variants on {len(test.texts)} banking77 test queries")
    with torch.inference_mode():
        return {name: accuracy(predict(module, test.texts, encoder), test.labels) for name, module in variants.items()}


def _models(
    folder: Path, settings: BenchSettings, texts: Sequence[str], log: Log, *, test: Split | None,
    known_accuracy: dict[str, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The models' figures. Accuracy: `known_accuracy` (an earlier repetition's), else measured on
    `test`, else the model cards'."""
    encoder = TextEncoder()
    cards: dict[str, ModelCard] = {}
    variants: dict[str, nn.Module] = {}
    names = [entry["name"] for entry in read_manifest(folder)["models"]]
    for name in ("full", "light", "pruned"):
        if name not in names:
            continue
        model, card = load_model(folder, name)
        cards[name] = card
        variants[name] = model
        variants[f"{name}_int8"] = quantize_int8(model, key=card.weights_sha256)
        if name == "full":
            # The CPU INT8 backend not served, timed beside the served one: the reason for the choice.
            variants["full_int8_torch"] = quantize_int8(model, backend="torch")
    if "full" not in cards or "light" not in cards:
        raise ArtifactError(f"{folder}: needs both full and light models (found: {', '.join(names)})")
    batch_texts = [texts[i % len(texts)] for i in range(settings.batch)]
    encoded = encoder(batch_texts)
    log(f"timing {len(variants)} variants at batch {settings.batch}, {settings.repeats} interleaved repetitions")
    latency = median_latencies(variants, (encoded.input_ids, encoded.attention_mask), settings.repeats)

    full, light = cards["full"], cards["light"]
    if known_accuracy is not None:
        accuracy, source = known_accuracy, "measured on the banking77 test split by this run"
    elif test is not None:
        accuracy, source = (
            _measured_accuracy(variants, test, encoder, log),
            "measured on the banking77 test split by this run",
        )
    else:
        accuracy = {name: float(card.metrics["test_accuracy"]) for name, card in cards.items()}
        accuracy |= {f"{name}_int8": float(card.metrics["test_accuracy_int8"]) for name, card in cards.items()}
        source = "the model cards (measured at training, with the INT8 backend of that time)"
    sample = [texts[i % len(texts)] for i in range(4 * settings.batch)]
    log(f"batch of one vs batch of {settings.batch}: {len(sample)} queries through the full model")
    one = _per_query_latency(variants["full"], encoder, sample, 1)
    batched = _per_query_latency(variants["full"], encoder, sample, settings.batch)
    agreement = _agreement(variants["full"], encoder, sample[: 2 * settings.batch], settings.batch)

    report: dict[str, Any] = {
        "latency_ms_batch": {name: round(seconds * 1000, 2) for name, seconds in latency.items()},
        "parameters": {name: card.parameters for name, card in cards.items()},
        "accuracy": accuracy,
        "accuracy_source": source,
        "oos_test_recall": {name: card.metrics.get("oos_test_recall") for name, card in cards.items()},
        "int8_backend": "onnxruntime",
        "int8_speedup": latency["full"] / latency["full_int8"],
        "int8_speedup_torch_backend": latency["full"] / latency["full_int8_torch"],
        "int8_speedup_light": latency["light"] / latency["light_int8"],
        "int8_accuracy_loss_pts": 100 * (accuracy["full"] - accuracy["full_int8"]),
        "int8_accuracy_loss_pts_light": 100 * (accuracy["light"] - accuracy["light_int8"]),
        "light_param_reduction": 1 - light.parameters / full.parameters,
        "light_speedup": latency["full"] / latency["light"],
        "light_accuracy_loss_pts": 100 * (accuracy["full"] - accuracy["light"]),
        "batching_model_ratio": one / batched,
        "batch_of_one_agreement": agreement,
    }
    if "pruned" in cards:
        report["pruned_speedup"] = latency["full"] / latency["pruned"]
    return report


def _seed_matrix(figures: dict[str, dict[str, Any]], accuracy: dict[str, float], batch: int) -> list[dict[str, Any]]:
    """The seed's optimisation matrix beside ours, from the figures' medians."""
    latency = {name.removeprefix("latency_ms_batch."): figure["median"] for name, figure in figures.items()
               if name.startswith("latency_ms_batch.")}  # fmt: skip
    matrix = [("quantization", "full_int8"), ("distillation", "light")]
    if "pruned" in latency:
        matrix.append(("structured pruning", "pruned"))
    rows = [
        {
            "optimisation": name,
            "latency_change_pct": 100 * (latency[variant] / latency["full"] - 1),
            "accuracy_change_pts": 100 * (accuracy[variant] - accuracy["full"]),
            "seed_latency_change_pct": SEED_MATRIX[name][0],
            "seed_accuracy_change_pts": SEED_MATRIX[name][1],
            "measured_as": f"full model FP32 vs this, median forward at batch {batch}",
        }
        for name, variant in matrix
    ]
    rows.append(
        {
            "optimisation": "dynamic batching",
            "latency_change_pct": 100 * (1 / figures["batching_model_ratio"]["median"] - 1),
            "accuracy_change_pts": 100 * (figures["batch_of_one_agreement"]["median"] - 1),
            "seed_latency_change_pct": SEED_MATRIX["dynamic batching"][0],
            "seed_accuracy_change_pts": SEED_MATRIX["dynamic batching"][1],
            "measured_as": f"model time per query, batches of one vs of {batch}; accuracy change is "
            "the share of answers that differ",
        }
    )
    return rows


def _load(url: str, rps: float, seconds: float, texts: Sequence[str], seed: int, *, timeout: float,
          slo: float | None = None) -> dict[str, Any]:  # fmt: skip
    spec = LoadSpec(url=f"{url}/v1/intent", rps=rps, duration=seconds, texts=texts, timeout=timeout, seed=seed,
                    warmup=min(1.0, seconds / 4))  # fmt: skip
    result = run_load_sync(spec)
    report = result.to_dict()
    if slo is not None:
        report |= {"slo_ms": slo * 1000, "goodput_rps": result.goodput_rps(slo)}
    return report


def measure_run(service: ServiceProcess, rps: float, seconds: float, texts: Sequence[str], seed: int, *,
                timeout: float, slo: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One load run against `service`, with what decides its figures: the breaker's state before and
    after (open means the light model answered; None: the server has no breaker), what answered, why
    its figures are invalid, and with `slo` (seconds) its goodput: answers within the SLO per second."""
    before = service.status()["breaker"]["open"]
    report = _load(service.url, rps, seconds, texts, seed, timeout=timeout, slo=slo)
    report["breaker_open"] = {"before": before, "after": service.status()["breaker"]["open"]}
    report["invalid_because"] = invalid_because(report)
    return report


def _p99(report: dict[str, Any]) -> float:
    value = report["latency_ms"]["p99"]
    return float("inf") if value is None else float(value) / 1000


def _sustains(report: dict[str, Any], rps: float, slo: float) -> bool:
    """p99 within the SLO, under 1% refused or failed, and (nearly) everything sent answered.

    Answers are compared with what was sent, not with `rps`: one seeded Poisson draw over a few
    seconds can fall 10-20% short of its mean, which says nothing about the server."""
    refused = report["shed"] + report["errors_5xx"] + report["transport_errors"] + report["dropped_by_generator"]
    sent = max(1, report["sent"])
    return _p99(report) <= slo and refused <= 0.01 * sent and report["completed_ok"] >= 0.98 * sent


UNLOADED_RPS = 10.0
"""The rate the unloaded p99 is measured at."""

PEERS = ("ray-serve",)
"""Serving stacks `--peer` can measure beside the service (model_service.peer_comparison)."""


def unloaded_p99(url: str, texts: Sequence[str], *, seconds: float, seed: int = 0) -> tuple[float, dict[str, Any]]:
    """p99 seconds at `UNLOADED_RPS` (the baseline the SLO is a multiple of), and the run's report."""
    unloaded = _load(url, UNLOADED_RPS, seconds, texts, seed, timeout=10)
    return _p99(unloaded), unloaded


def sustainable_rate(
    url: str, texts: Sequence[str], *, slo: float, start_rps: float, step_seconds: float, seed: int = 0,
    log: Log = print, confirm_seconds: float = 0.0, confirm_samples: int = 0, none_is_an_answer: bool = False,
) -> tuple[float, list[dict[str, Any]]]:  # fmt: skip
    """The highest rate the service sustains (p99 within `slo`, under 1% refused, nearly everything
    answered), rising by half each step from `start_rps`; and the steps. "8x" is eight times this.

    With `confirm_seconds`, the rate found is run again for that long, and stepped down once if it does
    not hold: one lucky short step on a noisy machine must not set a surge the service could never
    take, and one noisy stretch of the machine must not halve it again and again (seen in the drill:
    three confirms in a row failing at rates the service took alone with p99 at a third of its SLO).
    `confirm_samples` lengthens the confirm until that many answers are expected, so its p99 is
    one a report may quote; each step says why its figures are invalid, if they are. Not even
    `start_rps` sustained raises, unless `none_is_an_answer` (then the rate is 0)."""
    sustainable, steps, rps = 0.0, [], start_rps

    def step(rate: float, seconds: float, what: str) -> bool:
        report = _load(url, rate, seconds, texts, seed, timeout=10)
        ok = _sustains(report, rate, slo)
        needed = P99_MIN_SAMPLES if what == "confirm" else 0
        steps.append({"rps": rate, "sustained": ok, "p99_ms": report["latency_ms"]["p99"], "seconds": seconds,
                      "throughput_rps": report["throughput_rps"], "shed": report["shed"], "kind": what,
                      "answers": report["completed_ok"], "send_lag_p99_ms": report["send_lag_ms"]["p99"],
                      "invalid_because": invalid_because(report, min_samples=needed)})  # fmt: skip
        log(f"  {rate:7.1f} rps ({what}): p99 {report['latency_ms']['p99']} ms, {report['throughput_rps']:.1f} "
            f"answered/s, {report['shed']} shed -> {'sustained' if ok else 'over'}")  # fmt: skip
        return ok

    for _ in range(12):
        if not step(rps, step_seconds, "search"):
            break
        sustainable, rps = rps, rps * 1.5
    confirm = max(confirm_seconds, confirm_samples / max(sustainable, 1e-9) * 1.1 + 1 if confirm_samples else 0)
    if confirm > 0 and sustainable >= start_rps and not step(sustainable, confirm, "confirm"):
        sustainable /= 1.5
    if sustainable < start_rps:
        if none_is_an_answer:  # a peer that sustains nothing within the SLO is a finding, not an error
            return 0.0, steps
        raise RuntimeError(f"the service did not sustain even {start_rps} rps; see {steps}")
    return sustainable, steps


def _service(folder: Path, settings: BenchSettings, texts: Sequence[str], log: Log, seed: int) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2
    server_cpus, generator_cpus = ({cpus[0]}, set(cpus[1:])) if pinned else (None, None)
    base = {"artifacts": str(folder.parent), "version": folder.name, **dict(settings.serve_settings)}
    own_affinity = set(cpus)
    report: dict[str, Any] = {
        "pinned": pinned,
        "cores": {
            "server: event loop, admission, batcher, model thread": sorted(server_cpus or cpus),
            "load generator": sorted(generator_cpus or cpus),
        },
    }
    if generator_cpus:
        os.sched_setaffinity(0, generator_cpus)
    try:
        with ServiceProcess(base | {"admission": False}, cpus=server_cpus) as unprotected:
            log(f"unloaded: {UNLOADED_RPS:g} requests/s for {settings.unloaded_seconds:.0f} s")
            unloaded = measure_run(unprotected, UNLOADED_RPS, settings.unloaded_seconds, texts, seed, timeout=10)
            baseline = _p99(unloaded)
            slo = settings.slo_factor * baseline
            budget = settings.budget_factor * baseline
            report |= {"unloaded": unloaded, "unloaded_p99_ms": baseline * 1000, "slo_p99_ms": slo * 1000,
                       "latency_budget_ms": budget * 1000}  # fmt: skip
            log(f"  p99 {baseline * 1000:.1f} ms; SLO p99 {slo * 1000:.1f} ms; budget {budget * 1000:.1f} ms")

            # The breaker opens when the SLO breaks (its default, 1.5x the budget, would sit above this SLO).
            breaker = {"trip_above": slo, "recover_below": slo / 2}
            with ServiceProcess(base | {"admission": True, "latency_budget": budget, "breaker": breaker},
                                cpus=server_cpus) as protected:  # fmt: skip
                sustainable, steps = sustainable_rate(
                    protected.url, texts, slo=slo, start_rps=settings.start_rps, step_seconds=settings.step_seconds,
                    seed=seed, log=log, confirm_samples=settings.confirm_samples,
                )  # fmt: skip
                overload_rps = settings.overload_factor * sustainable
                report |= {"ramp": steps, "sustainable_rps": sustainable, "overload_rps": overload_rps}

                log(f"overload, admission on: {overload_rps:.0f} rps for {settings.overload_seconds:.0f} s")
                with protected.peak_rss() as memory:
                    on = measure_run(protected, overload_rps, settings.overload_seconds, texts, seed, timeout=10,
                                     slo=slo)  # fmt: skip
                on["memory"] = memory
                log("overload, admission on, batches of one")
                batching = protected.status()["mode"]
                protected.set_mode(batch_min=1, batch_max=1)
                one = measure_run(protected, overload_rps, settings.overload_seconds, texts, seed, timeout=10)
                log("overload, admission on, shedding (the answer table answers queries the model answered before)")
                protected.set_mode(batch_min=batching["batch_min"], batch_max=batching["batch_max"], shedding=True)
                table = _answer_table_counters(protected)
                shedding = measure_run(protected, overload_rps, settings.overload_seconds, texts, seed, timeout=10)
                shedding["answer_table"] = {k: v - table[k] for k, v in _answer_table_counters(protected).items()}

            log(f"overload, admission off: {overload_rps:.0f} rps for {settings.overload_seconds:.0f} s")
            with unprotected.peak_rss() as memory:
                off = measure_run(unprotected, overload_rps, settings.overload_seconds, texts, seed, timeout=15)
            off["memory"] = memory
    finally:
        os.sched_setaffinity(0, own_affinity)

    report |= {"overload_protected": on, "overload_batch_of_one": one, "overload_shedding": shedding,
               "overload_unprotected": off}  # fmt: skip
    table = shedding["answer_table"]
    # Admission comes before the body is parsed, so a refused query the table knew is a hit lost.
    report["answer_table_hits_lost_share"] = table["hits_lost"] / max(1.0, table["hits_lost"] + table["answered"])
    report["overload_p99_ratio_protected"] = _p99(on) / baseline
    report["overload_p99_ratio_unprotected"] = _p99(off) / baseline
    report["overload_admitted_share_of_sustainable"] = on["throughput_rps"] / sustainable
    report["overload_5xx"] = on["errors_5xx"]
    report["overload_5xx_unprotected"] = off["errors_5xx"]
    report["batching_throughput_ratio"] = on["throughput_rps"] / max(one["throughput_rps"], 1e-9)
    return report


def _answer_table_counters(service: ServiceProcess) -> dict[str, float]:
    """The answer table's answers and the hits admission's order cost it, as the service counts them."""
    counted = service.counters("peakguard_cache_answers", "peakguard_answer_table_hits_lost")
    return {"answered": counted["peakguard_cache_answers"], "hits_lost": counted["peakguard_answer_table_hits_lost"]}


def _same_answerer(*runs: dict[str, Any]) -> list[str]:
    """Why runs compared in one ratio were not answered by one model and precision (empty: they were)."""
    answerers = []
    for run_ in runs:
        by = {key: count for key, count in run_.get("answered_by", {}).items() if key != "cache"}
        total = sum(by.values())
        top = max(by, key=by.__getitem__) if by else "nothing"
        if total and by[top] < 0.99 * total:
            return [f"answered by {dict(by)} in one run: more than one model or precision"]
        answerers.append(top)
    return [] if len(set(answerers)) == 1 else [f"runs answered by {' vs '.join(answerers)}: not the same model"]


def _figures(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every number a repetition reports, each with why it is invalid (empty: measured properly)."""
    figures: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float, *reasons: list[str]) -> None:
        figures[name] = {"value": value, "invalid_because": sorted({r for group in reasons for r in group})}

    for name, ms in rep["latency_ms_batch"].items():
        add(f"latency_ms_batch.{name}", ms)
    for name in ("int8_speedup", "int8_speedup_torch_backend", "int8_speedup_light", "int8_accuracy_loss_pts",
                 "int8_accuracy_loss_pts_light", "light_param_reduction", "light_speedup", "light_accuracy_loss_pts",
                 "pruned_speedup", "batching_model_ratio", "batch_of_one_agreement"):  # fmt: skip
        if name in rep:
            add(name, rep[name])
    if "sustainable_rps" not in rep:
        return figures
    unloaded, on, one, off = (rep[k] for k in ("unloaded", "overload_protected", "overload_batch_of_one",
                                               "overload_unprotected"))  # fmt: skip
    confirm = [step["invalid_because"] for step in rep["ramp"] if step["kind"] == "confirm"] or [
        ["the sustainable rate was never confirmed"]
    ]
    add("unloaded_p99_ms", rep["unloaded_p99_ms"], unloaded["invalid_because"])
    add("sustainable_rps", rep["sustainable_rps"], *confirm)
    add("overload_p99_ms_protected", on["latency_ms"]["p99"] or math.inf, on["invalid_because"])
    add("overload_p99_ratio_protected", rep["overload_p99_ratio_protected"], on["invalid_because"],
        unloaded["invalid_because"], _same_answerer(unloaded, on))  # fmt: skip
    lag_only = [r for r in on["invalid_because"] if r.startswith("generator")]
    add("overload_answered_rps", on["throughput_rps"], lag_only)
    add("overload_admitted_share_of_sustainable", rep["overload_admitted_share_of_sustainable"], lag_only, *confirm)
    add("overload_5xx", rep["overload_5xx"], lag_only)
    add("batching_throughput_ratio", rep["batching_throughput_ratio"], lag_only,
        [r for r in one["invalid_because"] if r.startswith("generator")], _same_answerer(on, one))  # fmt: skip
    add("overload_p99_ms_unprotected", off["latency_ms"]["p99"] or math.inf, off["invalid_because"])
    if "overload_shedding" in rep:
        shedding_lag = [r for r in rep["overload_shedding"]["invalid_because"] if r.startswith("generator")]
        add("answer_table_hits_lost_share", rep["answer_table_hits_lost_share"], shedding_lag)
    return figures


def _aggregate(repetitions: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each figure over the repetitions: median, min, max, every value, and every reason it is invalid."""
    out: dict[str, dict[str, Any]] = {}
    for name in repetitions[0]:
        values = [rep[name]["value"] for rep in repetitions if name in rep]
        reasons = sorted({f"repetition {i + 1}: {r}" for i, rep in enumerate(repetitions)
                          for r in rep.get(name, {}).get("invalid_because", [])})  # fmt: skip
        out[name] = {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values,
                     "valid": not reasons, "invalid_because": reasons}  # fmt: skip
    return out


def judge_goals(figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each goal judged on its figure's median; a figure measured improperly meets no goal."""
    goals: dict[str, tuple[str, Callable[[float], bool]]] = {
        "batching_throughput_ratio": (">= 3", lambda v: v >= 3),
        "int8_speedup": (">= 2", lambda v: v >= 2),
        "int8_accuracy_loss_pts": ("<= 1.0", lambda v: v <= 1.0),
        "light_param_reduction": (">= 0.76", lambda v: v >= 0.76),
        "light_speedup": (">= 3", lambda v: v >= 3),
        "light_accuracy_loss_pts": ("<= 2.0", lambda v: v <= 2.0),
        "overload_p99_ratio_protected": ("<= 3", lambda v: v <= 3),
        "overload_admitted_share_of_sustainable": (">= 0.9", lambda v: v >= 0.9),
        "overload_5xx": ("== 0", lambda v: v == 0),
        # With --peer: peakguard's goodput at 8x over the peer's, its p99 at an equal answered rate over the peer's.
        "peer_goodput_ratio": (">= 1", lambda v: v >= 1),
        "peer_equal_rate_p99_ratio": ("<= 1", lambda v: v <= 1),
    }
    return {
        key: {
            "value": figures[key]["median"],
            "goal": goal,
            "valid": figures[key]["valid"],
            "met": bool(figures[key]["valid"] and check(figures[key]["median"])),
        }
        for key, (goal, check) in goals.items()
        if key in figures
    }


def run(settings: BenchSettings, *, log: Log = print,
        on_repetition: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole bench. `on_repetition(report)`: the report so far, after each repetition (marked
    `"partial": true` until the last), so that a run that dies late keeps what it measured."""
    folder = settings.artifacts / (settings.version or newest_version(settings.artifacts))
    torch.manual_seed(settings.seed)
    texts: Sequence[str] = SAMPLE_QUERIES
    test: Split | None = None
    report: dict[str, Any] = {
        "version": folder.name,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
        "machine": machine.describe(),
    }
    if settings.repetitions < 1:
        raise ValueError(f"repetitions must be at least 1, got {settings.repetitions}")
    if settings.peer and (settings.peer not in PEERS or not settings.service):
        raise ValueError(
            f"peer {settings.peer!r}: the one peer is ray-serve, and it needs the service run (no --no-service)"
        )
    if settings.data is not None:
        # The test split is banking77's own test.csv; the seed only moves train/validation, which
        # the baseline trains on together, so any seed gives the same baseline.
        intents = load_banking77(settings.data / "banking77")
        texts, test = intents.test.texts, intents.test
        log("TF-IDF + logistic regression baseline")
        report["tfidf_baseline"] = tfidf_baseline(intents)
    repetitions: list[dict[str, Any]] = []
    for index in range(settings.repetitions):
        log(f"repetition {index + 1} of {settings.repetitions}")
        known = repetitions[0]["accuracy"] if repetitions and test is not None else None
        rep = _models(folder, settings, texts, log, test=test, known_accuracy=known)
        if settings.service:
            rep |= _service(folder, settings, texts, log, seed=settings.seed + index)
            if settings.peer:
                from model_service import peer_comparison  # Ray comes with the bench extra only

                rep["peer"] = peer_comparison.compare_or_say_why(
                    folder, rep, texts=texts, seed=settings.seed + index, unloaded_seconds=settings.unloaded_seconds,
                    step_seconds=settings.step_seconds, start_rps=settings.start_rps,
                    overload_seconds=settings.overload_seconds, serve_settings=dict(settings.serve_settings), log=log,
                )  # fmt: skip
                judged = peer_comparison.figures(rep, rep["peer"]) if "error" not in rep["peer"] else {}
                for name, (value, reasons) in judged.items():
                    rep.setdefault("peer_figures", {})[name] = {"value": value, "invalid_because": sorted(set(reasons))}
        rep["figures"] = _figures(rep) | rep.pop("peer_figures", {})
        repetitions.append(rep)
        _summarise(report, repetitions, settings)
        if on_repetition is not None:
            on_repetition(report | {"partial": len(repetitions) < settings.repetitions})
    return report


def _summarise(report: dict[str, Any], repetitions: list[dict[str, Any]], settings: BenchSettings) -> None:
    """Fill `report`'s figures, goals and matrix from the repetitions measured so far."""
    first = repetitions[0]
    report |= {key: first[key] for key in ("parameters", "accuracy", "accuracy_source", "oos_test_recall")}
    if "tfidf_baseline" in report:
        report["accuracy"]["tfidf_baseline"] = report["tfidf_baseline"]["test_accuracy"]
    report["figures"] = _aggregate([rep["figures"] for rep in repetitions])
    report["seed_matrix"] = _seed_matrix(report["figures"], report["accuracy"], settings.batch)
    report["goals"] = judge_goals(report["figures"])
    report["repetitions"] = repetitions


def render(report: dict[str, Any]) -> str:
    """The figures a person reads: accuracy, every figure as median (min-max) over the repetitions
    with the reason it is invalid where it is, the seed's matrix beside ours, the goals."""
    figures = report["figures"]
    runs = len(report["repetitions"])
    lines = [f"model version {report['version']}  ({machine.summary(report['machine'])}), {runs} repetitions"]
    lines.append(f"accuracy (banking77 test), from {report['accuracy_source']}:")
    for name, value in report["accuracy"].items():
        lines.append(f"  {name:<16} {100 * value:6.2f}%")
    lines.append("figures, median (min-max):")
    for name, figure in figures.items():
        spread = f"({figure['min']:.3g}-{figure['max']:.3g})"
        lines.append(f"  {name:<40} {figure['median']:10.3f} {spread:<20} {'' if figure['valid'] else 'INVALID'}")
        lines.extend(f"      {reason}" for reason in figure["invalid_because"])
    lines.append("the seed's optimisation matrix, ours beside it:")
    lines.append(f"  {'optimisation':<20} {'latency':>9} {'(seed)':>8} {'accuracy':>10} {'(seed)':>8}")
    for row in report["seed_matrix"]:
        lines.append(
            f"  {row['optimisation']:<20} {row['latency_change_pct']:+8.1f}% {row['seed_latency_change_pct']:+7.0f}% "
            f"{row['accuracy_change_pts']:+8.2f}pt {row['seed_accuracy_change_pts']:+7.1f}pt"
        )
    for index, rep in enumerate(report["repetitions"]):
        if "sustainable_rps" not in rep:
            continue
        lines.append(
            f"service, repetition {index + 1}: unloaded p99 {rep['unloaded_p99_ms']:.1f} ms, sustains "
            f"{rep['sustainable_rps']:.0f} rps (p99 <= {rep['slo_p99_ms']:.1f} ms); "
            f"overload at {rep['overload_rps']:.0f} rps:"
        )
        for label, key in (("admission on", "overload_protected"), ("batches of one", "overload_batch_of_one"),
                           ("shedding", "overload_shedding"), ("admission off", "overload_unprotected")):  # fmt: skip
            if key not in rep:
                continue
            run_ = rep[key]
            lines.append(
                f"  {label:<15} p99 {run_['latency_ms']['p99']} ms, {run_['throughput_rps']:.1f} answered/s by "
                f"{run_['answered_by']}, shed {run_['shed']}, 5xx {run_['errors_5xx']}, timeouts/transport "
                f"{run_['transport_errors']}, send lag p99 {run_['send_lag_ms']['p99']} ms, breaker open "
                f"{run_['breaker_open']['before']}->{run_['breaker_open']['after']}"
            )
    for index, rep in enumerate(report["repetitions"]):
        if "peer" not in rep:
            continue
        peer = rep["peer"]
        if "error" in peer:
            lines.append(f"peer {report['settings']['peer']}, repetition {index + 1}: not measured: {peer['error']}")
            continue
        lines.append(
            f"peer {peer['peer']}, repetition {index + 1}: unloaded p99 {peer['unloaded_p99_ms']:.1f} ms, sustains "
            f"{peer['sustainable_rps']:.0f} rps; queue bounded at {peer['queue_bound']} for the "
            f"{peer['latency_budget_ms']:.0f} ms budget:"
        )
        equal = f"{peer['equal_rate_rps']:.1f} rps"
        for label, run_ in (("8x, peer unbounded", peer["overload_unbounded"]), ("8x, peer", peer["overload"]),
                            ("8x, peakguard", rep["overload_protected"]),
                            (f"{equal}, peer", peer["equal_rate"]["peer"]),
                            (f"{equal}, peakguard", peer["equal_rate"]["peakguard"])):  # fmt: skip
            goodput = f", goodput {run_['goodput_rps']:.1f}/s" if "goodput_rps" in run_ else ""
            lines.append(
                f"  {label:<22} p99 {run_['latency_ms']['p99']} ms, {run_['throughput_rps']:.1f} answered/s{goodput}, "
                f"shed {run_['shed']}, 5xx {run_['errors_5xx']}, send lag p99 {run_['send_lag_ms']['p99']} ms"
            )
    lines.append("goals (on the median; an invalid figure meets none):")
    for key, goal in report["goals"].items():
        verdict = ("met" if goal["met"] else "MISSED") if goal["valid"] else "INVALID"
        lines.append(f"  {key:<40} {goal['value']:10.3f}  goal {goal['goal']:<7} {verdict}")
    return "\n".join(lines)


_TABLE_ROWS = (
    # (figure, what it is, format)
    ("accuracy.full", "full MoE test accuracy (FP32)", "pct"),
    ("accuracy.full_int8", "full MoE test accuracy, INT8 as served", "pct"),
    ("accuracy.light", "light model test accuracy (FP32)", "pct"),
    ("accuracy.tfidf_baseline", "TF-IDF + logistic regression, same split (the floor)", "pct"),
    ("int8_speedup", "INT8 (ONNX Runtime) vs FP32, full model at batch 32", "x"),
    ("int8_speedup_torch_backend", "INT8 (torch, not served) vs FP32, the same", "x"),
    ("int8_accuracy_loss_pts", "INT8 accuracy loss, full model", "pt"),
    ("light_speedup", "light vs full at batch 32", "x"),
    ("light_param_reduction", "light model's parameters fewer than full's", "pct"),
    ("light_accuracy_loss_pts", "light vs full accuracy", "pt"),
    ("pruned_speedup", "structured pruning vs full at batch 32", "x"),
    ("batching_model_ratio", "model time per query, batches of one vs of 32", "x"),
    ("unloaded_p99_ms", "service unloaded p99 (10 requests/s)", "ms"),
    ("sustainable_rps", "sustainable rate (p99 within 3x unloaded)", "rps"),
    ("overload_answered_rps", "answered per second at 8x, admission on", "rps"),
    ("batching_throughput_ratio", "served at 8x, dynamic batching vs batches of one", "x"),
    ("overload_p99_ratio_protected", "admitted p99 at 8x over unloaded p99", "x"),
    ("overload_admitted_share_of_sustainable", "answered at 8x over the sustainable rate", "pct"),
    ("overload_5xx", "5xx at 8x, admission on", "n"),
    ("overload_p99_ms_unprotected", "p99 at 8x, admission off", "ms"),
    (
        "answer_table_hits_lost_share",
        "at 8x while shedding: queries the answer table knew, refused by admission first",
        "pct",
    ),
    ("overload_goodput_rps", "goodput at 8x (answers within the SLO per second), admission on", "rps"),
    ("peer.unloaded_p99_ms", "Ray Serve peer: unloaded p99", "ms"),
    ("peer.sustainable_rps", "Ray Serve peer: sustainable rate (the same SLO)", "rps"),
    ("peer.overload_goodput_rps", "Ray Serve peer: goodput at the same 8x load", "rps"),
    ("peer.overload_p99_ms", "Ray Serve peer: p99 at 8x", "ms"),
    ("peer.overload_p99_ms_unbounded", "Ray Serve peer: p99 at 8x with Ray's default unbounded queue", "ms"),
    ("peer.overload_5xx", "Ray Serve peer: 5xx at 8x", "n"),
    ("peer_goodput_ratio", "goodput at 8x, peakguard over the peer", "x"),
    ("equal_rate_p99_ms", "p99 at an equal answered rate (the lower sustainable rate), peakguard", "ms"),
    ("peer.equal_rate_p99_ms", "p99 at that rate, the peer", "ms"),
    ("peer_equal_rate_p99_ratio", "p99 at an equal answered rate, peakguard over the peer", "x"),
)


def _cell(value: float, kind: str) -> str:
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "pt":
        return f"{value:+.2f} pt"
    if kind in ("ms", "rps"):
        return f"{value:.1f} {kind}"
    return f"{value:g}"


def markdown(report: dict[str, Any], *, command: str) -> str:
    """The README's table, built from one `bench model` JSON and never edited by hand: each figure's
    median and min-max over the repetitions, its goal and verdict, and why it is invalid if it is."""
    runs = len(report["repetitions"])
    lines = [
        f"`{command}` ({machine.summary(report['machine'])}, model version {report['version']}, {runs} repetitions; "
        f"accuracy from {report['accuracy_source']}):",
        "",
        "| figure | median | min-max | goal |",
        "|---|---|---|---|",
    ]
    goals = report["goals"]
    for key, label, kind in _TABLE_ROWS:
        if key.startswith("accuracy."):
            value = report["accuracy"].get(key.removeprefix("accuracy."))
            if value is not None:
                lines.append(f"| {label} | {_cell(value, kind)} | | |")
            continue
        figure = report["figures"].get(key)
        if figure is None:
            continue
        goal = goals.get(key)
        verdict = ""
        if goal is not None:
            verdict = f"{goal['goal']}: " + (
                ("met" if goal["met"] else "**missed**") if goal["valid"] else "**invalid**"
            )
        spread = f"{_cell(figure['min'], kind)} - {_cell(figure['max'], kind)}" if runs > 1 else ""
        invalid = "" if figure["valid"] else " (invalid: " + "; ".join(figure["invalid_because"]) + ")"
        lines.append(f"| {label} | {_cell(figure['median'], kind)}{invalid} | {spread} | {verdict} |")
    return "\n".join(lines)
