"""Traffic forecasting: the request rate 15 minutes ahead and its p90, so that capacity is warm
before the wave (the seed's long-term fix; issue 20). An LSTM over the rate's history and the
calendar, beside seasonal-naive and Holt-Winters baselines, judged by one backtest protocol
(`forecast.backtest`). torch is imported only by `forecast.lstm`, when an LSTM is asked for."""
