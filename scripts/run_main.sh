#!/usr/bin/env bash
# The main job: the full poison_sensitivity sweep on a local Ray, tracked in mlruns/, then its analysis
# (results/poison_sensitivity/) and validation. Extra arguments go to the launcher (e.g. --address auto,
# --tracking-uri URI); see: .venv/bin/python -m tune_jobs poison_sensitivity --help
source "$(dirname "$0")/env.sh"
exec python -m tune_jobs poison_sensitivity --analyze results/poison_sensitivity "$@"
