"""The letters capability: payer policies and their evaluation, the evidence library, and the
grounded wording of letters. Plain Python: no Prefect, no web framework, no CLI library."""
