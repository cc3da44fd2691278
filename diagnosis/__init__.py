"""Where the time goes, and why: the service's metrics read back, the likely bottleneck named with
the runbook for it (`peakguard diagnose`). `series` is what is read (the same PromQL live and in a
drill's recording), `readings` what it says per pod over a window, `causes` the verdict."""
