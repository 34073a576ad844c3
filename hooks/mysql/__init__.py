"""The MySQL / MariaDB writer (writer.py)."""
