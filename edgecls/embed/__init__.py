"""Embeddings, catalogs (exact and HNSW search), few-shot prototypes and clustering on pooled features."""
