"""The PostgreSQL writer (writer.py)."""
