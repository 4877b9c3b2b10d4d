"""A destination the gateway does not ship: documents written as JSON lines to a file (the test of
"a new destination is one folder and one registry line")."""
