"""Helpers shared by several test modules (importable as `helpers.<module>`: tests/ is on sys.path)."""



