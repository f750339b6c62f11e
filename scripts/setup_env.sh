# Sourced by the other scripts: create .venv with the project and its test extra, once, and make
# tiktoken find GPT-2's vocabulary offline when a local copy sits beside the checkout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d ../shared/data/tiktoken_cache ]; then
  export TIKTOKEN_CACHE_DIR="$(cd ../shared/data/tiktoken_cache && pwd)"
fi
export PATH="$PWD/.venv/bin:$PATH"
