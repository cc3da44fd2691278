"""peakguard's infrastructure: the Pulumi program for the GPU cluster, and the facts it owns.

Importing this package imports no Pulumi; `infra.facts`, `infra.config` and `infra.targets` are
usable by the runbooks and the policy pack without it.
"""
