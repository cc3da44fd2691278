"""`peakguard forecast backtest`: how well the rate 15 minutes ahead can be forecast on a series."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EXIT_INVALID = 2
EXIT_WRITE_ERROR = 3
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|m|min|h)")


def register(commands: Any) -> None:
    """Add `forecast` to the `peakguard` command (entry point `peakguard.commands`)."""
    parser = commands.add_parser(
        "forecast",
        help="forecast the request rate ahead of a surge (backtest on a series)",
        description="Traffic forecasting (forecast/): an LSTM beside seasonal naive and Holt-Winters.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    backtest = actions.add_parser(
        "backtest",
        help="judge the forecasters on a timestamp,value CSV",
        description=(
            "Fit each model on the first 80% of the series, then forecast every held-out point HORIZON ahead "
            "from the actual history up to its origin (no refit). Prints and writes per model: MASE (scaled by "
            "one day's seasonal naive on the training part; the main figure), sMAPE, pinball loss at p90 (in the "
            "series' units), the share of points above the p90 forecast (under-provisioned), and what "
            "provisioning to the p90 costs (capacity above the actual, as a share). The interval is inferred; "
            "bad rows and gaps are reported, not crashed on. Exit status: 0 done, 2 invalid input (the file, "
            "the horizon), 3 the --json or --plot file cannot be written."
        ),
    )
    backtest.add_argument(
        "--csv", required=True, type=Path, metavar="FILE", help="a CSV with timestamp and value columns"
    )
    backtest.add_argument(
        "--horizon", default="15m", help="how far ahead, e.g. 15m, 1h, 900s (rounded up to whole steps)"
    )
    backtest.add_argument("--seed", type=int, action="append", dest="seeds", metavar="N",
                          help="an LSTM seed; repeat for several (default: 0)")  # fmt: skip
    backtest.add_argument("--model", action="append", dest="models", choices=("lstm", "holt_winters", "seasonal_naive"),
                          help="a model to run; repeat for several (default: all three)")  # fmt: skip
    backtest.add_argument("--event", action="append", default=[], metavar="START/END",
                          help="a known event (a sale, a holiday) as two ISO times, e.g. 2014-11-11T00:00/"
                          "2014-11-12T00:00: the LSTM sees a flag inside it; repeat for several")  # fmt: skip
    backtest.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON here")
    backtest.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw forecast against actual, with the p90 band"
    )
    backtest.set_defaults(handler=_backtest)


def parse_duration(text: str) -> Any:
    """`15m` -> a pandas Timedelta; ValueError names the text."""
    import pandas as pd

    match = _DURATION.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--horizon {text!r}: expected a positive duration such as 15m, 1h or 900s")
    unit = {"s": "s", "m": "min", "min": "min", "h": "h"}[match.group(2)]
    return pd.Timedelta(float(match.group(1)), unit=unit)


def parse_event(text: str) -> Any:
    import pandas as pd

    start, sep, end = text.partition("/")
    try:
        if not sep:
            raise ValueError
        window = pd.Timestamp(start), pd.Timestamp(end)
    except ValueError:
        raise ValueError(f"--event {text!r}: expected START/END, two ISO times") from None
    # The series' timestamps are naive UTC (series.read_csv converts aware ones): so are the events'.
    window = tuple(stamp.tz_convert(None) if stamp.tzinfo else stamp for stamp in window)
    if not window[0] < window[1]:
        raise ValueError(f"--event {text!r}: the end must come after the start")
    return window


def _backtest(args: argparse.Namespace) -> int:
    from forecast import backtest
    from forecast.series import SeriesError, read_csv
    from infra import atomic_file

    try:
        horizon = parse_duration(args.horizon)
        events = [parse_event(text) for text in args.event]
        series = read_csv(args.csv)
        info = series.report()
        print(f"{series.name}: {info['points']} points every {series.step}, {info['start']} to {info['end']}; "
              f"{info['bad_rows']} bad rows skipped, {info['duplicate_timestamps']} duplicate timestamps averaged, "
              f"{info['filled_steps']} missing steps interpolated")  # fmt: skip
        for line in series.bad_rows:
            print(f"  skipped {line}")
        result = backtest.run(series, horizon=horizon, seeds=args.seeds or [0], models=args.models or backtest.MODELS,
                              events=events)  # fmt: skip
    except (SeriesError, ValueError) as exc:
        print(f"peakguard forecast backtest: {exc}", file=sys.stderr)
        return EXIT_INVALID
    report = result.to_dict()
    print(_table(report))
    try:
        if args.json is not None:
            atomic_file.write_text(args.json, json.dumps(report, indent=2, sort_keys=True) + "\n")
        if args.plot is not None:
            from forecast.plot import render_png

            atomic_file.write_bytes(args.plot, render_png(result))
    except OSError as exc:
        print(f"peakguard forecast backtest: cannot write {exc.filename or 'the output'}: {exc.strerror}",
              file=sys.stderr)  # fmt: skip
        return EXIT_WRITE_ERROR
    return 0


def _table(report: dict[str, Any]) -> str:
    protocol = report["protocol"]
    lines = [
        f"held out {protocol['held_out_points']} points from {protocol['held_out_from']}, each forecast "
        f"{protocol['horizon_steps']} step(s) ({protocol['horizon_minutes']:g} min) ahead, no refit; "
        f"{report['seconds']:.1f} s",
        f"{'model':<16}{'MASE':>8}{'sMAPE %':>9}{'pinball p90':>13}{'under p90':>11}{'over-provision':>16}",
    ]
    for name, figures in report["models"].items():
        spread = (
            f"  (seeds {figures['mase_range'][0]:.3f}-{figures['mase_range'][1]:.3f})"
            if "mase_range" in figures
            else ""
        )
        row = f"{name:<16}{figures['mase']:>8.3f}{figures['smape']:>9.2f}{figures['pinball_p90']:>13.2f}"
        lines.append(f"{row}{figures['under_p90_share']:>11.1%}{figures['over_provision_share']:>16.1%}{spread}")
    if "lstm_mase_vs_holt_winters" in report:
        lines.append(f"LSTM MASE {report['lstm_mase_vs_holt_winters']:+.1%} against Holt-Winters")
    return "\n".join(lines)
