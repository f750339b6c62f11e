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


import pytest  # noqa: E402


@pytest.fixture(scope='session', autouse=True)
def clear_streaming_leftovers(tmp_path_factory):
    """Remove streaming shared memory left by earlier test sessions before this one, and this session's after.

    Segments count as leftovers when every folder they name is gone or lies in another session's
    pytest temp folder. Without this, killed test runs pile up segments that streaming 0.13 opens
    for every dataset it builds, until the session runs out of file descriptors.
    """
    from gpt2_composer.stale_state import remove_prefixes

    base = str(tmp_path_factory.getbasetemp()) + os.sep
    sessions_root = os.path.dirname(base.rstrip(os.sep)) + os.sep

    def left_by_earlier_session(folders: list[str]) -> bool:
        return all(not os.path.exists(folder) or (folder.startswith(sessions_root) and not folder.startswith(base))
                   for folder in folders)

    remove_prefixes(left_by_earlier_session)
    yield
    remove_prefixes(lambda folders: all(folder.startswith(base) for folder in folders))
