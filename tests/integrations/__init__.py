"""Integration packages the tests add through the registry, as a new outside system would be added."""
