"""Capacity planning: how many replicas, GPUs and nodes a request rate needs within a latency SLO
(a queueing model, plus the 30% headroom of `infra.facts`), from the stack's own config. Reads
infra's Pulumi-free config and facts; imports no torch and no Pulumi."""
