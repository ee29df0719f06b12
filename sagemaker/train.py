"""SageMaker entry point: run geossl pretraining inside the training container.

The SDK's drivers start this script (under torchrun) from the uploaded source checkout with the job's
hyperparameters as ``--key value`` arguments. All logic lives in ``geossl.cloud.container`` so it can
be tested without a container; the source checkout goes first on ``sys.path`` so the uploaded geossl
is the one that runs, whatever the image has installed.
"""

import sys
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SOURCE_DIR))

from geossl.cloud.container import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(source_dir=SOURCE_DIR))
