"""The lab: AWS, Kubernetes and the model service's pods, stood up on this machine for the incident
drill and the end-to-end tests (`lab.lab.Lab`). Nothing of ours imports it (pyproject's contract)."""
