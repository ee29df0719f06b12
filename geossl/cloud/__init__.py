"""Running geossl in the cloud: Amazon SageMaker training jobs.

``job_config`` (what a job is), ``launcher`` (builds and sends it; needs the optional SDK,
``pip install 'geossl[sagemaker]'``), ``container`` (the entry point's side, no SDK), ``cli``
(``geossl sagemaker launch|local``).
"""
