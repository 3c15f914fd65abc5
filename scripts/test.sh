#!/usr/bin/env bash
# Create/refresh .venv, then run the whole test suite (real Ray, real MLflow). Extra arguments go to pytest.
# Two pytest-xdist workers run the tests (readers of one shared sweep or module fixture stay on one worker), then the
# tests marked `solo` run alone. ROBUSTLAB_TEST_WORKERS=0 runs everything in one process, in file order.
source "$(dirname "$0")/env.sh"
workers="${ROBUSTLAB_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
    exec python -m pytest "$@"
fi
status=0
python -m pytest -n "$workers" --dist loadgroup -m "not solo" "$@" || status=$?
solo=0
python -m pytest -m solo "$@" || solo=$?
[ "$solo" -eq 5 ] && solo=0  # no solo test among the ones asked for
[ "$status" -eq 5 ] && status=0
if [ "$status" -eq 0 ]; then status=$solo; fi
exit "$status"
