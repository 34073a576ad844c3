"""The MySQL / MariaDB writer: settings.py (its mysql[] entry), writer.py (the writer), and
the writer's pure parts: strategy.py (which lock), coordinates.py (the binary log position
under it), failures.py (what a failed statement means).

Imports nothing, so that agent/config.py can load settings.py without pymysql.
"""
