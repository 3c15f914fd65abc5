# Sourced by the entry scripts: create or refresh .venv so it matches pyproject.toml.
# The torch==2.13.0 pin takes the CPU wheel where pip offers one and the standard wheel elsewhere.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
STAMP=.venv/.robustlab-installed
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "== installing robustlab and its dependencies into .venv (first time: a few minutes)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
