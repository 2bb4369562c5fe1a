"""AnnData input and batching (NumPy / SciPy / anndata only; no Keras)."""
