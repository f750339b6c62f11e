#!/usr/bin/env bash
# Install and run the test suite (CPU only). Extra arguments go to pytest.
source "$(dirname "$0")/setup_env.sh"
python -m pytest -q "$@"
