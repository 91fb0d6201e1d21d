"""Using a trained run: load it (load.py), prompt and generate (generate.py), score answers (scoring.py)."""
