"""Launch a SageMaker pretraining job: ``python sagemaker/launch.py --config configs/sagemaker_dino.yaml``.

A thin alias of ``geossl sagemaker launch`` for people who look in ``sagemaker/`` first; same options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sagemaker", "launch", *sys.argv[1:]]))
