"""Prior-authorization document pipeline: letters of medical necessity, packets and tracking.

The package is the plain-Python core. It never imports Prefect, a web framework or the CLI
library; `flows/`, `priorauth.cli` and the portal are thin shells over it.
"""

__version__ = "0.1.0"
