"""The writers: `apply`, `sync` and `scoped` set flags and modes and make them take effect
on a compiled model (optimizer migration, learning-rate multipliers, traced functions)."""
