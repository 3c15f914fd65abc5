"""The MLflow record of robustlab sweeps: the one place that knows its names, encoding and queries.

* :mod:`record.schema`: tag and param names, how config values become params and back (no MLflow import);
* :mod:`record.store`: which tracking store a command talks to (no MLflow import);
* :mod:`record.runs`: experiments and run queries;
* :mod:`record.write`: the sweep's parent run and one run per grid point (what launching writes);
* :mod:`record.checkpoints`: a long point's checkpoints in its own run;
* :mod:`record.lease`: one writer per sweep (the lease tag on its parent run);
* :mod:`record.read`: a sweep as a typed read model (what analysis reads).

Imports MLflow, pandas and NumPy only: any past sweep can be re-read without torch, Ray or the study's code.
"""
