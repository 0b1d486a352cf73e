"""Replication audit: do generated images copy training images? SSCD descriptors + exact chunked search."""
