"""Bounded agent tools: the tool contract (tools), a registry, run limits, the runner with approvals and
rollback (runner, store), and the hash-chained audit log (audit, models)."""
