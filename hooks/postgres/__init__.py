"""The PostgreSQL writer: settings.py (its postgres[] entry), writer.py (the writer), and
the writer's pure parts: wal.py (LSNs and segment names), artifacts.py (the label files).

Imports nothing, so that agent/config.py can load settings.py without psycopg.
"""
