"""The rules, grouped by domain: each module holds the rules of one."""
