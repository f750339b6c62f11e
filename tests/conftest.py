"""Shared pytest setup: the repository root on sys.path and offline tokenizer files."""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# `convert/` is a folder of scripts, not an installed package.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# tiktoken downloads GPT-2's vocabulary unless TIKTOKEN_CACHE_DIR contains a copy. Set it
# before any test loads the tokenizer; spawned worker processes inherit it.
_TIKTOKEN_CACHE = REPO_ROOT.parent / "shared/data/tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _TIKTOKEN_CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_TIKTOKEN_CACHE)
