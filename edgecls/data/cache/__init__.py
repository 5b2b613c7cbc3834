"""The decoded-image caches behind `edgecls.data.loaders.build_loaders` (the only caller to use).

policy        where caches live, which mode a run gets (auto | none | ram | disk | gpu), sizes
decoded       uint8 rows in RAM or a memory-mapped file, keyed by the files and the decoding
train_decoder the training rows' decoder (free of torch: the gpu fill's reader processes import it)
augment       batched crop + flip + normalize on the training device
loader        CachedSet / CachedLoader, the DataLoader of cached rows
gpu           rows decoded straight into GPU memory (nvjpeg), filled while the first epoch trains
fill_workers  the reader processes of the gpu fill

This package imports nothing on its own, so a reader process pays for torch only if it asks.
"""
