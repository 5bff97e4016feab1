"""The ipmi stage's worker: BMC jobs over pyghmi lanplus, one lane and session per BMC, read-back after
every command (ops.py), pyghmi's idle and stale-session traps handled in session.py."""
