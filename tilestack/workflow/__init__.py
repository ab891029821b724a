"""The workflow's glue: one module per Snakemake rule, each with one function of the rule's name.

Rule ``X`` (``rules/*.smk``) runs ``scripts/X.py``, which sets the job's thread limits and
calls ``tilestack.workflow.X.X(snakemake)``: the function reads the rule's inputs, calls the
library (registration, metrics, reconstruction, validation, ...) and writes the outputs
atomically. Nothing below this package imports it.
"""
