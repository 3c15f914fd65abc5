#!/usr/bin/env bash
# Create/refresh .venv, then run the whole test suite (real Ray, real MLflow). Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
python -m pytest "$@"
