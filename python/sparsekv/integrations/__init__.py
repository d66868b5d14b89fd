"""Adapters that let serving engines use sparsekv (see each module)."""
