"""Imported by the flows before prefect: sets the environment Prefect reads when it starts
(settings.prefect_environment). An import, so the flows' imports stay at the top of the file."""

from priorauth.settings import prefect_environment

prefect_environment()
