"""The document pipeline: the state machine, its stages and the workers that drive them."""
