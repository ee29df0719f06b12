"""SageMaker Processing entry point: ``geossl classify`` or ``geossl embed`` over this instance's scenes.

``geossl sagemaker classify|embed`` starts this script in every instance of the job with the command and
its options as arguments; the logic lives in ``geossl.cloud.processing`` so it is tested without a
container. The uploaded source checkout goes first on ``sys.path`` (as in ``train.py``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.cloud.processing import container_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(container_main(sys.argv[1:]))
