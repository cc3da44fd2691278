"""The policy pack, as `pulumi preview --policy-pack policies` loads it: built from the rules, nothing else."""

from pulumi_policy import EnforcementLevel, PolicyPack

from policies.catalog import RULES
from policies.pack import build_policies
from policies.waivers import WAIVERS, check_waivers

check_waivers(WAIVERS, RULES)  # a waiver naming no rule stops the pack loading, with the waiver named
PolicyPack(name="peakguard", enforcement_level=EnforcementLevel.MANDATORY, policies=build_policies(RULES, WAIVERS))
