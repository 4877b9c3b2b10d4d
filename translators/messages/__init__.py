"""One module per message: each maps a TransactionSet to a canonical dict plus findings."""
