# Sourced by the scripts: make .venv (once) and install the project with the given extra.
# Re-installs when pyproject.toml is newer than the last install stamp.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extra="${1:-}"
stamp="$venv/.installed${extra:+-$extra}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet -e "$root${extra:+[$extra]}"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
