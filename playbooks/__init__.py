"""Node playbooks (an ansible-runner private_data_dir) and the generator of their facts file.

The playbooks themselves are YAML under `project/`; the only Python here renders
`project/vars/instance_types.yml` from `infra.facts`, so nodes are checked against the same numbers
the Pulumi program lays them out with.
"""
