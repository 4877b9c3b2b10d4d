"""Repository-wide pytest plugins: the real OpenSSH sshd and the store (SQLite + PostgreSQL) fixtures."""

pytest_plugins = ["tests.sshd", "tests.db"]
