"""The steps layer: what the scripts call, between argument parsing and the method.

``steps.partition`` cuts list-shaped work (θ* seeds, gradient tasks, truth and estimate subsets) into shards,
``steps.merge`` puts sharded result files back together, ``steps.launch`` runs the shards of a script through a
local process pool, Ray or SLURM (submitit).
"""
