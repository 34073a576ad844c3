"""The MySQL / MariaDB writer: settings.py (its mysql[] entry), writer.py (the writer).

Imports nothing, so that agent/config.py can load settings.py without pymysql.
"""
