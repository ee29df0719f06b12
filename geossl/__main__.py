"""``python -m geossl``: the command line without the installed ``geossl`` script (the SageMaker containers
run the uploaded checkout, which is on ``PYTHONPATH`` but not installed)."""

import sys

from geossl.cli import main

if __name__ == "__main__":
    sys.exit(main())
