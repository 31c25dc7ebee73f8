# Sourced by the scripts: make .venv (once) and install the project with the given extra.
# Re-installs when pyproject.toml is newer than the last install stamp.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extra="${1:-}"
stamp="$venv/.installed${extra:+-$extra}"
# A venv cut off while it was made (no pip yet) is made again, not used half-made.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet -e "$root${extra:+[$extra]}"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
