"""Operator tools of the CIR suite: the `cir` command, the demo, the local suite and the model packs."""
