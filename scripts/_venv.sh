# Sourced by the scripts: make .venv (once) and install the project with the given extra.
# Re-installs when pyproject.toml is newer than the last install stamp.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extra="${1:-}"
stamp="$venv/.installed${extra:+-$extra}"
# A venv cut off while it was made (no pip yet) is made again, not used half-made.
if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet -e "$root${extra:+[$extra]}"
    touch "$stamp"
fi
# The console's browser tests drive Debian's chromium (Playwright's own browser downloads
# do not work here): install it when it is missing and we can (root with apt-get);
# otherwise those tests skip and say why.
if [ "$extra" = test ] && ! command -v chromium >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the console's browser tests (apt-get)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >/dev/null 2>&1 || echo "could not install chromium: the browser tests will skip" >&2
fi
export PATH="$venv/bin:$PATH"
cd "$root"
