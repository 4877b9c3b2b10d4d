"""Repository-wide pytest plugins: the real OpenSSH sshd fixture for the SFTP tests."""

pytest_plugins = ["tests.sshd"]
