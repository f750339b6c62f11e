#!/usr/bin/env bash
# Install, convert the built-in offline sample (Python's own documentation) to MDS shards, and train
# yamls/gpt2-cpu.yaml on it through the same entry point as the 8-GPU recipe. Extra arguments are
# passed to the trainer as key=value overrides.
source "$(dirname "$0")/setup_env.sh"
python convert/owt_to_mds.py --input builtin:pydoc-topics --out-root data/pydoc --seq-len 256 --overwrite
composer -n 1 -m gpt2_composer.train yamls/gpt2-cpu.yaml data.root=data/pydoc "$@"
