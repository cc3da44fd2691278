"""Run by the Pulumi engine (`main: infra/` in Pulumi.yaml): `pulumi up -s dev|staging|prod`."""

from infra.program import run

run()
