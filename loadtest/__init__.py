"""Distributed load: the open-loop generator as a Kubernetes Indexed Job of N workers, their HDR
histograms merged into one report (issue 21, item 1)."""
