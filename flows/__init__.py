"""The Prefect flows: the deployments' entrypoints and what `croco run` calls.

pipeline   the whole method, every enabled stage
evaluate   arena, judge and EuroEval for the evaluated models
languages  bring a run up to date with its config's languages (scheduled)
compare    runs side by side: a table and a chart per metric
image      build the Apptainer/Singularity image the SLURM jobs run in
audit      the reward transfer audit of a config's reward model (`croco audit-reward`)
"""
