"""A change's life: the command grammar and input rules, the snapshot of the PBX,
the planner, the approvals policy, the executor, the vault for passwords, and
`Changes`, the one door the handlers, the CLI and the scheduler go through."""
