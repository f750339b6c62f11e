"""Data conversion scripts: text corpora to MDS shards of GPT-2 tokens (`owt_to_mds`)."""
