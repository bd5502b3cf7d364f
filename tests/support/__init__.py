"""Test support kept by the suite: loopback servers that misbehave as real networks do."""
