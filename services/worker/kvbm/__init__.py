"""KVBM: the lower tiers of the KV cache (host memory, disk) under the device pool."""
