"""Node groups: one-third batches, drains, blue/green moves and in-place driver changes, over
the ports. The runbooks in `library/` drive them."""
