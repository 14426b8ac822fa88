"""The staff portal: a thin FastAPI shell over the core (accounts, tracking, pipeline)."""
