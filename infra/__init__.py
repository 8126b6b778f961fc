"""Where croco runs: the servers a laptop starts (Prefect, S3), SLURM job templates and the test cluster
(slurm/), launcher configs for multi-GPU training (accelerate/) and the cluster image (apptainer/).
The files ship with croco as package data; read them with `importlib.resources.files("croco.infra")`."""
