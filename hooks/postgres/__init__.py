"""The PostgreSQL writer: settings.py (its postgres[] entry), writer.py (the writer).

Imports nothing, so that agent/config.py can load settings.py without psycopg.
"""
