"""Quality filters: cheap heuristics and model scores that decide which records to keep."""
