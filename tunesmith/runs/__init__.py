"""Run folders: the write side (`folder.py`), the files (`record.py`), the read side (`run.py`), the registry."""
