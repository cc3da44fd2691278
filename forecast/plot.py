"""The backtest's picture: the held-out actual against each model's forecast, and the LSTM's p90
band (what capacity would follow), over the last days held out."""

from __future__ import annotations

import io

import numpy as np

from forecast.backtest import Backtest

__all__ = ["render_png"]

_DAYS_SHOWN = 3


def render_png(result: Backtest) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result.series
    shown = min(len(result.targets), _DAYS_SHOWN * series.steps_per_day)
    targets = result.targets[-shown:]
    times = series.index[targets]
    figure, axis = plt.subplots(figsize=(12, 5))
    axis.plot(times, series.values[targets], color="black", linewidth=1.2, label="actual")
    colours = {"lstm": "tab:blue", "holt_winters": "tab:orange", "seasonal_naive": "tab:grey"}
    for name, runs in result.runs.items():
        run = runs[0]  # the first seed: a band per seed would hide the picture
        axis.plot(
            times,
            run.point[-shown:],
            color=colours[name],
            linewidth=0.9,
            label=f"{name} ({run.figures['mase']:.3f} MASE)",
        )
        if name == "lstm":
            axis.fill_between(times, np.minimum(run.point[-shown:], run.p90[-shown:]), run.p90[-shown:],
                              color=colours[name], alpha=0.2,
                              label=f"lstm p90 (covers {1 - run.figures['under_p90_share']:.0%})")  # fmt: skip
    minutes = result.protocol.horizon * series.step.total_seconds() / 60
    axis.set_title(f"{series.name}: forecasts {minutes:g} min ahead, last {shown} held-out points")
    axis.set_ylabel("requests per interval")
    axis.legend(loc="upper left", fontsize=8)
    figure.autofmt_xdate()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=110)
    plt.close(figure)
    return out.getvalue()
