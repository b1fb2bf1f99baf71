"""Files: reading checkpoints lazily, writing sharded safetensors, staging the destination, provenance."""
