"""Packed datasets: WebDataset tar shards per split plus an index JSON (`edgecls data pack` writes them).

member  one image inside a shard (`Member`): where its bytes are, read like a file; free of torch
index   the index JSON: format, validation, and a shard folder read as the dataset scan's splits
stream  each epoch's training samples streamed from whole shards (WebDataset), seeded, DDP-aware

This package imports nothing on its own, so the image readers pay for torch only if they ask.
"""
